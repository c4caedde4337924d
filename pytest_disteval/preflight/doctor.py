"""The runner: one session's checks, in order, from its jobs, their plans and the inventory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_disteval.gpu.inventory import NoGPUError
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.plan.planner import JobPlan
from pytest_disteval.preflight import chat, disk, gpu, software
from pytest_disteval.preflight.check import FAIL, PASS, Check
from pytest_disteval.preflight.disk import DiskUsage
from pytest_disteval.preflight.gpu import Plans, Probe


@dataclass
class Doctor:
    """The checks for one session: its jobs, their plans, the inventory."""

    scheduler: JobScheduler
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    nvml: Any = None  # the pynvml module (a fake in tests); imported when real GPUs need it
    probe: Probe | None = None  # torch/CUDA/NCCL versions; default: a subprocess
    free_bytes: DiskUsage | None = None
    preflight: bool = False  # at the start of a run: only what that run needs

    def run(self) -> list[Check]:
        checks: list[Check] = []
        inv, gpus_check = gpu.gpus(self.scheduler, self.environ)
        checks.append(gpus_check)
        real = inv is not None and inv.source == "nvml"
        plans = self._plans()
        on_gpu = [p for p in plans.values() if isinstance(p, JobPlan) and p.groups
                  and p.groups[0]]
        if real:
            checks.extend(gpu.driver_and_nccl(
                self.nvml, self._probe, python=self.scheduler.settings.python,
                collectives=any(p.layout.group_size > 1 for p in on_gpu),
                every=not self.preflight))
        checks.extend(software.backends(self._jobs()))
        if not self.preflight:
            checks.extend(_plan_checks(plans))
        checks.extend(gpu.interconnect(inv, plans))
        checks.extend(gpu.packing(inv, plans, self.environ))
        checks.extend(disk.disk(self.scheduler.settings.base_dir, self._jobs(), self.environ,
                                self.free_bytes or disk.free_space))
        checks.append(disk.offline(self.environ))
        checks.extend(disk.models(self._jobs(), self.environ))
        checks.extend(chat.chat(self._jobs()))
        checks.extend(disk.datasets(self._jobs(), self.environ))
        return checks

    def _probe(self) -> dict[str, Any]:
        if self.probe is not None:
            return self.probe()
        return gpu.probe_torch(self.scheduler.settings.python)

    def _jobs(self) -> list[EvalJob]:
        return list(self.scheduler.jobs.values())

    def _plans(self) -> dict[str, JobPlan | LayoutError]:
        out: dict[str, JobPlan | LayoutError] = {}
        try:
            self.scheduler.plan_all()
        except (NoGPUError, ValueError):
            pass  # each job's plan says why
        for job in self._jobs():
            try:
                out[job.key] = self.scheduler.plan(job)
            except LayoutError as exc:
                out[job.key] = exc
        return out


def _plan_checks(plans: Plans) -> list[Check]:
    # in a run, a layout error fails only its job's items (with this message)
    checks = []
    for key, plan in plans.items():
        if isinstance(plan, LayoutError):
            checks.append(Check(f"plan {key}", FAIL, str(plan),
                                "see --disteval-plan and docs/layouts.md"))
        else:
            where = " | ".join(",".join(str(g.index) for g in group) or "CPU"
                               for group in plan.groups)
            checks.append(Check(f"plan {key}", PASS, f"{plan.layout} on {where}"))
    return checks
