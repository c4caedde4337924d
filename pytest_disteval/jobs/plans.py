"""Where each job of the session runs: the inventory, read once, and one plan per job.

Plans are made together (``plan_all``) once every job is known: with GPUs and
several jobs, the jobs run side by side and share the groups, so each plan
knows how many jobs it shares them with. A plan that cannot be made is kept as
its ``LayoutError``, raised to every caller: the items of that job fail with it.
"""

from __future__ import annotations

from pytest_disteval.backends import BACKENDS
from pytest_disteval.executors.base import Executor
from pytest_disteval.gpu.inventory import Inventory, NoGPUError
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.launch import JobFailure
from pytest_disteval.plan import planner
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.plan.planner import JobPlan
from pytest_disteval.settings import Settings


class JobPlans:
    def __init__(self, settings: Settings, executor: Executor, jobs: dict[str, EvalJob]) -> None:
        self.settings = settings
        self.executor = executor
        self.jobs = jobs  # the registry's: every job known so far, by key
        self.side_by_side = False  # plan_all found several jobs to run at once on GPUs
        self._plans: dict[str, JobPlan | LayoutError] = {}
        self._inventory_loaded = False
        self._inventory_value: Inventory | None = None

    def inventory(self) -> Inventory | None:
        """This host's GPUs (or the fake ones, or the Ray cluster's), read once, on first use."""
        if not self._inventory_loaded:
            self._inventory_value = self._executor_inventory() or planner.inventory(
                self.settings.gpu)
            self._inventory_loaded = True
        return self._inventory_value

    def _executor_inventory(self) -> Inventory | None:
        from pytest_disteval.executors.ray import RayExecutor

        if isinstance(self.executor, RayExecutor) and self.settings.gpu.gpus != 0:
            return self.executor.inventory()
        return None

    def plan(self, job: EvalJob) -> JobPlan:
        """The job's layout and groups; LayoutError says what to change."""
        key = job.key
        if key not in self._plans:
            try:
                self._plans[key] = planner.plan_job(job, self.settings.gpu, self.inventory(),
                                                    sharing=self._sharing())
            except (LayoutError, NoGPUError, ValueError) as exc:
                self._plans[key] = LayoutError(str(exc))
        plan = self._plans[key]
        if isinstance(plan, LayoutError):
            raise plan
        return plan

    def _sharing(self) -> int:
        """How many jobs run side by side: all of them when jobs are prefetched."""
        return len(self.jobs) if self.side_by_side else 1

    def plan_all(self) -> dict[str, JobPlan]:
        """Plans of every job; with GPUs and several jobs, they will share the groups."""
        try:
            inv = self.inventory()
        except (NoGPUError, ValueError):
            inv = None  # each job's plan says why
        self.side_by_side = (len(self.jobs) > 1 and inv is not None
                             and not self.settings.gpu.xdist_worker)
        self._plans.clear()
        plans = {}
        for key, job in self.jobs.items():
            try:
                plans[key] = self.plan(job)
            except LayoutError:
                continue  # its items fail with the message when they run
        if self.side_by_side and all(not p.groups[0] for p in plans.values()):
            self.side_by_side = False  # the models all run on the CPU: in turn
            self._plans.clear()
            plans = {k: self.plan(j) for k, j in self.jobs.items() if k in plans}
        return plans

    def failure(self, job: EvalJob) -> JobFailure | None:
        """Why the job cannot run where it was asked to; None when it has a plan."""
        try:
            self.plan(job)
        except LayoutError as exc:
            return JobFailure(f"cannot lay out model {job.name!r}: {exc}")
        return None


def backend_missing(job: EvalJob) -> str | None:
    """Why the job's backend cannot run here (not installed, and how to install it)."""
    backend = BACKENDS[job.model.backend]
    if backend.available():
        return None
    return (f"backend {backend.name!r} is not installed (no module {backend.module!r}); "
            f"install it with: {backend.install_hint}")
