"""Runs each EvalJob once per session and hands its results to the items.

A job runs when its first item runs (so ``-x`` stops before later models load),
or, with GPUs and several jobs, all of them at once when the run loop starts.
Entries found in the store are not evaluated again; the rest go to one worker,
or with dp > 1 to one shard worker per replica and a scoring worker. A failed
worker fails only the items whose entries it did not store; other jobs go on.

The ``JobScheduler`` orchestrates: plan (jobs/plans.py) -> lease -> launch
(jobs/launch.py; jobs/sharded.py for dp > 1) -> record (jobs/record.py) ->
results (jobs/outcome.py, which also keeps the jobs and their outcomes).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import filelock

from pytest_disteval.backends import BACKENDS
from pytest_disteval.executors.base import Executor, WorkerRun
from pytest_disteval.executors.local import LocalExecutor, kill_all
from pytest_disteval.gpu.inventory import Inventory
from pytest_disteval.gpu.lease import LeaseManager, LeaseTimeout
from pytest_disteval.jobs import record as jobrecord
from pytest_disteval.jobs.fingerprint import digest
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.launch import JobFailure, Launcher, backend_env, failure, worker_spec
from pytest_disteval.jobs.outcome import (
    JobOutcome,
    JobRegistry,
    read_recorded,
    write_recorded,
    write_results,
)
from pytest_disteval.jobs.plans import JobPlans, backend_missing
from pytest_disteval.jobs.precheck import precheck
from pytest_disteval.jobs.sharded import ShardedRun
from pytest_disteval.plan.planner import JobPlan
from pytest_disteval.settings import Settings
from pytest_disteval.store.export import assemble, export_path
from pytest_disteval.store.results import ResultStore
from pytest_disteval.suite.model import TaskEntry


class JobScheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.preflight_failure: str | None = None  # set when a check failed (doctor.py)
        self.leases = LeaseManager(os.environ.get("PYTEST_DISTEVAL_LOCK_DIR")
                                   or settings.base_dir / "leases"
                                   if settings.gpu.fake_gpus else None)
        # this host's workers (and a Ray run's scoring worker): forked or subprocesses
        self._local = LocalExecutor(settings.worker_start, settings.logs_dir)
        self.executor: Executor = _make_executor(settings, self._local)
        self.registry = JobRegistry(self._run, self.executor.kill_all)
        self.plans = JobPlans(settings, self.executor, self.registry.jobs)
        self.launcher = Launcher(settings, self.executor, self._local)
        self.sharded = ShardedRun(self.launcher, self.leases)
        if settings.clear_cache and not settings.is_xdist_worker:
            ResultStore(settings.store_dir).clear()  # xdist: the controller clears, once
        if settings.use_cache:
            self.store = ResultStore(settings.store_dir)
        else:
            # results still need a place to land, just not one a later run reads
            self._tmp = tempfile.TemporaryDirectory(prefix="disteval-nocache-")
            self.store = ResultStore(Path(self._tmp.name))

    def close(self) -> None:
        kill_all()  # a safety net: no worker outlives the session
        self.executor.close()
        self._local.close()  # the forkserver too
        self.registry.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- the session's jobs (jobs/outcome.py) and their plans (jobs/plans.py) ---

    @property
    def jobs(self) -> dict[str, EvalJob]:
        return self.registry.jobs

    @property
    def outcomes(self) -> dict[str, JobOutcome]:
        return self.registry.outcomes

    def job_for(self, job: EvalJob, entries: Iterable[TaskEntry]) -> EvalJob:
        """Register ``job`` (or return the one already known) and add entries to it."""
        return self.registry.job_for(job, entries)

    def outcome(self, job: EvalJob) -> JobOutcome:
        return self.registry.outcome(job)

    def plan(self, job: EvalJob) -> JobPlan:
        """The job's layout and groups; LayoutError says what to change."""
        return self.plans.plan(job)

    def plan_all(self) -> dict[str, JobPlan]:
        """Plans of every job; with GPUs and several jobs, they will share the groups."""
        return self.plans.plan_all()

    def inventory(self) -> Inventory | None:
        """This host's GPUs (or the fake ones, or the Ray cluster's), read once, on first use."""
        return self.plans.inventory()

    def inventory_source(self) -> str | None:
        inv = self.inventory()
        return inv.source if inv is not None else None

    # -- running ---------------------------------------------------------------

    def _run(self, job: EvalJob) -> JobOutcome:
        if self.preflight_failure is not None:  # an xdist worker's failed preflight
            return JobOutcome(job, {}, set(), JobFailure(self.preflight_failure), None, None)
        plan_failure = self.plans.failure(job)
        if plan_failure is not None:
            return JobOutcome(job, {}, set(), plan_failure, None, None)
        layout = self.plan(job).layout
        job.set_split(layout.tp, layout.pp)
        keys = {e.name: job.entry_key(e) for e in job.entries}
        lock_path = self.settings.base_dir / "locks" / f"{job.model_key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # two sessions (or xdist workers) on one model: the second waits, then reuses
        predict, rescore = self.settings.predict_only, self.settings.rescore
        with filelock.FileLock(str(lock_path)):
            # predicting and rescoring redo every entry: the result store answers neither
            entries = {} if predict or rescore else self._stored(job, job.entries, keys)
            cached = set(entries)
            todo = [e for e in job.entries if e.name not in entries]
            failure: JobFailure | None = None
            skip: str | None = None
            run: WorkerRun | None = None
            if todo:
                skip = backend_missing(job)
                # the model is looked for only where its worker will run, with a backend
                failure = precheck(job, todo, weights=skip is None and not self.executor.remote)
                skip = None if failure else skip
                if skip and job.model.required:
                    failure, skip = JobFailure(skip), None
                if failure is None and skip is None and rescore \
                        and not self._responses(job).exists():
                    failure = JobFailure(
                        f"--disteval-rescore: no responses are stored for model {job.name!r} "
                        f"(model key {job.model_key[:12]}, {self._responses(job)}): run it "
                        "with --disteval-predict-only first, with the same model and settings")
                if failure is None and skip is None:
                    try:
                        run, failure = self._start_worker(job, todo, keys)
                    except LeaseTimeout as exc:
                        failure = JobFailure(f"no free GPU group for model {job.name!r} "
                                             f"within the job timeout: {exc}")
                if not predict:  # a prediction stores responses, no entry
                    entries.update(self._stored(job, todo, keys))
            set_key = digest(sorted(keys.values()))
            meta_path = self.store.root / "jobs" / f"{job.model_key}-{set_key}.json"
            recorded = None
            record = self._record(job, run, partial=bool(cached)) if run is not None else None
            if run is not None and failure is None and not cached and not predict:
                # a wall time means something for the whole set of tasks only
                write_recorded(meta_path, run.wall_s, record)
            elif run is None:
                recorded, record = read_recorded(meta_path)
        outcome = JobOutcome(job, entries, cached, failure,
                             run.wall_s if run is not None and not cached else None,
                             recorded if run is None else None)
        outcome.partial = run is not None and bool(cached)
        outcome.skip_reason = skip if todo else None
        if predict and run is not None and failure is None:
            # the items have nothing to judge: they say where the responses went
            outcome.skip_reason = (f"predicted only (--disteval-predict-only): the responses "
                                   f"are in {self._responses(job)}; score them with "
                                   "--disteval-rescore")
        outcome.record = record
        if entries:
            # the suite's path, not its name: two suites may share a name
            path = (self.settings.results_dir / job.suite.path.with_suffix("")
                    / f"{job.name}.json")
            samples = None
            if self.settings.export_samples:
                # the suite's order, cached entries and new ones alike
                parts = [export_path(self.store.path(job.model_key, keys[e.name]))
                         for e in job.entries if e.name in entries]
                samples = assemble(path.with_suffix(".samples.jsonl"),
                                   [p for p in parts if p.exists()])
            outcome.results_path = write_results(path, job, entries, record, samples)
        return outcome

    def _stored(self, job: EvalJob, entries: Iterable[TaskEntry],
                keys: dict[str, str]) -> dict[str, dict[str, Any]]:
        """The entries the store holds already, by name."""
        found = {}
        for entry in entries:
            stored = self.store.get(job.model_key, keys[entry.name])
            # --disteval-samples: an entry stored without its export is evaluated again
            if stored is not None and not (self.settings.export_samples and not export_path(
                    self.store.path(job.model_key, keys[entry.name])).exists()):
                found[entry.name] = stored
        return found

    def _responses(self, job: EvalJob) -> Path:
        # beside the entries, so --disteval-no-cache and --disteval-clear-cache cover it too
        return self.store.root / "responses" / f"{job.model_key}.sqlite"

    def _run_dir(self, job: EvalJob) -> Path:
        return self.settings.runs_dir / job.run_name

    def _record(self, job: EvalJob, run: WorkerRun, *, partial: bool) -> dict[str, Any]:
        """The job record of this session's run, from its run directory."""
        plan = self.plan(job)
        used = self.launcher.used(job)
        distinct = {tuple(g.uuid for g in group) for group in used}
        if plan.on_gpu:
            no_gpu = "no NVML timeline was written for this job"
        elif used and self.executor.remote:
            # Ray's actors sample what they hold, logical GPUs too: none sent a timeline
            no_gpu = f"no {self.executor.name} actor of this job sent an NVML timeline back"
        elif used:
            no_gpu = ("the job ran on the CPU with a fake GPU inventory "
                      "(--disteval-fake-gpus): there is no GPU for NVML to sample")
        else:
            no_gpu = "the job ran on the CPU: there is no GPU for NVML to sample"
        return jobrecord.build(layout=plan.layout,
                               pack=len(used) // len(distinct) if distinct else 1,
                               on_gpu=plan.on_gpu, groups=used, run_dir=self._run_dir(job),
                               wall_s=run.wall_s, partial=partial, no_gpu_reason=no_gpu)

    def _start_worker(self, job: EvalJob, todo: list[TaskEntry],
                      keys: dict[str, str]) -> tuple[WorkerRun, JobFailure | None]:
        """Evaluate ``todo``: one direct worker, or dp shard workers then a scoring worker."""
        plan = self.plan(job)
        run_dir = self._run_dir(job)
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("*.json"):
            stale.unlink()
        spec = worker_spec(job, todo, keys, run_dir, plan, self.store,
                           export_samples=self.settings.export_samples)
        timeout = job.model.timeout or self.settings.timeout
        responses = self._responses(job)
        if self.settings.rescore:
            # the scoring worker alone, on this host: every answer from the store, no model
            score = self.launcher.launch(job, plan, [], {},
                                         replace(spec, mode="score", responses=responses),
                                         run_dir / "spec-score.json", f"{job.run_name}-score",
                                         timeout)
            return score, failure(job, score, run_dir / "error.json", timeout)
        if len(plan.groups) > 1 or self.executor.remote or self.settings.predict_only:
            # predict-only: the shards alone (one at dp 1) store every response
            return self.sharded.run(job, plan, spec, run_dir, responses, timeout,
                                    score=not self.settings.predict_only)
        # one replica: any free group will do (xdist workers and other sessions share)
        lease = (self.leases.acquire_any(plan.candidates or plan.groups, timeout=timeout,
                                         owner=f"pytest-disteval {job.key}")
                 if plan.groups[0] else None)
        try:
            group = list(lease.gpus) if lease else []
            # only the group's variables: the worker's own environment must win
            run = self.launcher.launch(job, plan, group, lease.env({}) if lease else {}, spec,
                                       run_dir / "spec.json", job.run_name, timeout)
        finally:
            if lease is not None:
                lease.release()
        return run, failure(job, run, run_dir / "error.json", timeout)

    # -- before the run loop ---------------------------------------------------

    def prefetch(self) -> None:
        """Start every job now, side by side on free groups; items then wait for theirs.

        Only with GPUs (real or fake): on a CPU the cores are one resource, jobs run in
        turn. Leases decide who runs where; a job waits for free groups.
        """
        plans = self.plan_all()
        if not self.plans.side_by_side:
            return
        self.registry.start(plans, max(len(p.candidates) for p in plans.values()) or 1)

    def start_line(self, job: EvalJob, plan: JobPlan) -> str | None:
        """How the job's local workers will start, for --disteval-plan."""
        if self.executor.remote:
            return None  # Ray's own lines say where the actors go
        backend = BACKENDS[job.model.backend]
        if self.launcher.preload(backend, "direct") is not None:
            return ("  workers: forked from the session's forkserver (torch, transformers "
                    "and lm-eval imported once)")
        if backend.preload is None:
            why = f"{backend.name} workers are not forked"
        else:
            why = "--disteval-worker-start subprocess"
        return f"  workers: subprocesses ({why})"

    def warm_up(self) -> None:
        """Start the forkserver now when a job will fork its workers from it.

        Its imports (10-15 s on a GPU machine) then overlap the preflight, the leases
        and the other workers' start instead of following them. Nothing starts when
        every entry is stored (a warm rerun), no backend forks (vllm, torchrun), or
        every such job fails its precheck (jobs/precheck.py: nothing to load).
        """
        if self.executor.remote:
            return
        for job in self.jobs.values():
            backend = BACKENDS.get(job.model.backend)
            if backend is None or self.plans.failure(job):
                continue
            if self.launcher.preload(backend, "direct") is None:
                continue
            layout = self.plan(job).layout
            if backend.torchrun and layout.group_size > 1:
                continue
            job.set_split(layout.tp, layout.pp)
            todo = [e for e in job.entries
                    if self.store.get(job.model_key, job.entry_key(e)) is None]
            # nothing to evaluate, or a job that fails before its worker: nothing to load
            if not todo or precheck(job, todo, weights=True) is not None:
                continue
            self._local.prestart(self.settings.python, backend.preload, backend_env(backend))
            return


def _make_executor(settings: Settings, local: LocalExecutor) -> Executor:
    if settings.executor == "ray":
        from pytest_disteval.executors.ray import RayExecutor

        return RayExecutor(settings.ray_address, settings.base_dir / "workers.jsonl")
    return local

