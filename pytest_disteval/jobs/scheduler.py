"""Runs each EvalJob once per session and hands its results to the items.

A job runs when its first item runs (so ``-x`` stops before later models load).
Entries found in the store are not evaluated again; the rest go to one worker
subprocess. A failed worker fails only the items whose entries it did not
store; other jobs go on.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock

from pytest_disteval import __version__
from pytest_disteval.backends import BACKENDS, Backend
from pytest_disteval.executors.base import Executor, WorkerRun, WorkerTask
from pytest_disteval.executors.forkserver import COMMON_PRELOAD
from pytest_disteval.executors.local import LocalExecutor, kill_all, log_tail
from pytest_disteval.gpu.inventory import GPU, Inventory, NoGPUError
from pytest_disteval.gpu.lease import Lease, LeaseManager, LeaseTimeout
from pytest_disteval.gpu.monitor import GpuSampler
from pytest_disteval.jobs import record as jobrecord
from pytest_disteval.jobs.fingerprint import digest
from pytest_disteval.jobs.job import EvalJob, missing_data_files
from pytest_disteval.plan import planner
from pytest_disteval.plan.layout import Layout, LayoutError
from pytest_disteval.plan.planner import JobPlan
from pytest_disteval.settings import Settings
from pytest_disteval.store.results import ResultStore, merge_entries, write_json_atomic
from pytest_disteval.suite.model import TaskEntry
from pytest_disteval.worker.spec import (
    EXIT_BAD_REQUEST,
    EntrySpec,
    RunSpec,
    ShardSpec,
    WorkerSpec,
)

# set in every worker: a quality gate must not depend on what a hub serves today
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class JobFailure:
    """Why a job's worker did not deliver; rendered in every item that depended on it."""

    message: str
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    log_path: Path | None = None
    tail: str = ""
    timed_out: bool = False

    def render(self) -> str:
        lines = [self.message]
        if self.command:
            lines.append(f"command:   {' '.join(self.command)}")
            status = ("killed after timeout" if self.timed_out
                      else f"exit code {self.returncode}")
            lines.append(f"status:    {status}")
        if self.log_path is not None:
            lines.append(f"log:       {self.log_path}")
        if self.tail:
            lines.append("last lines of the log:")
            lines.extend(f"  | {line}" for line in self.tail.splitlines())
        return "\n".join(lines)


@dataclass
class JobOutcome:
    job: EvalJob
    entries: dict[str, dict[str, Any]]  # entry name -> stored entry
    cached: set[str]  # entry names that came from the store
    failure: JobFailure | None
    wall_s: float | None  # the worker's wall time in this session, None if none ran
    recorded_wall_s: float | None  # the wall time recorded when these results were computed
    results_path: Path | None = None
    skip_reason: str | None = None  # the backend is not installed (and not required)
    partial: bool = False  # this session evaluated only some entries, the rest were stored
    record: dict[str, Any] | None = None  # the job record (jobrecord.py): what budgets read
    warned: bool = False  # the GPU imbalance warning was issued (once per job)

    @property
    def fully_cached(self) -> bool:
        return bool(self.entries) and self.cached == set(self.entries) and self.wall_s is None


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    # the worker imports this package; make sure it resolves to this very copy
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def _backend_env(backend: Backend, group_env: dict[str, str] | None = None) -> dict[str, str]:
    """A worker's environment with the backend's defaults (the user's own values win)."""
    env = worker_env(group_env)
    for name, value in backend.env.items():
        env.setdefault(name, value)
    return env


class JobScheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs: dict[str, EvalJob] = {}
        self.outcomes: dict[str, JobOutcome] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._plans: dict[str, JobPlan | LayoutError] = {}
        self._prefetching = False
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[JobOutcome]] = {}
        self._alloc = threading.Lock()  # one job at a time picks its groups: no deadlock
        self._used: dict[str, list[list[GPU]]] = {}  # the groups each job's replicas ran on
        self._inventory_loaded = False
        self.preflight_failure: str | None = None  # set when a check failed (doctor.py)
        self._inventory_value: Inventory | None = None
        self.leases = LeaseManager(os.environ.get("PYTEST_DISTEVAL_LOCK_DIR")
                                   or settings.base_dir / "leases"
                                   if settings.gpu.fake_gpus else None)
        # this host's workers (and a Ray run's scoring worker): forked or subprocesses
        self._local = LocalExecutor(settings.worker_start, settings.logs_dir)
        self.executor: Executor = _make_executor(settings, self._local)
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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    def job_for(self, job: EvalJob, entries: Iterable[TaskEntry]) -> EvalJob:
        """Register ``job`` (or return the one already known) and add entries to it."""
        key = job_key(job)
        known = self.jobs.setdefault(key, job)
        for entry in entries:
            known.add(entry)
        return known

    def outcome(self, job: EvalJob) -> JobOutcome:
        key = job_key(job)
        job = self.jobs.setdefault(key, job)
        future = self._futures.pop(key, None)
        if future is not None:
            try:
                self.outcomes[key] = future.result()
            except BaseException:
                self.executor.kill_all()  # Ctrl-C while waiting: the prefetched jobs' too
                raise
        known = self.outcomes.get(key)
        # entries added after the job ran (the fixture, a later call) need another run
        if known is None or any(e.name not in known.entries and known.failure is None
                                for e in job.entries):
            self.outcomes[key] = self._run(job)
        return self.outcomes[key]

    # -- running ---------------------------------------------------------------

    def _run(self, job: EvalJob) -> JobOutcome:
        if self.preflight_failure is not None:  # an xdist worker's failed preflight
            return JobOutcome(job, {}, set(), JobFailure(self.preflight_failure), None, None)
        plan_failure = self._plan_failure(job)
        if plan_failure is not None:
            return JobOutcome(job, {}, set(), plan_failure, None, None)
        layout = self.plan(job).layout
        job.set_split(layout.tp, layout.pp)
        keys = {e.name: job.entry_key(e) for e in job.entries}
        lock_path = self.settings.base_dir / "locks" / f"{job.model_key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # two sessions (or xdist workers) on one model: the second waits, then reuses
        with filelock.FileLock(str(lock_path)):
            entries: dict[str, dict[str, Any]] = {}
            for entry in job.entries:
                stored = self.store.get(job.model_key, keys[entry.name])
                if stored is not None:
                    entries[entry.name] = stored
            cached = set(entries)
            todo = [e for e in job.entries if e.name not in entries]
            failure = None
            skip: str | None = None
            run: WorkerRun | None = None
            if todo:
                failure = _precheck(job, todo)
                skip = None if failure else self._backend_missing(job)
                if skip and job.model.required:
                    failure, skip = JobFailure(skip), None
                if failure is None and skip is None:
                    try:
                        run, failure = self._start_worker(job, todo, keys)
                    except LeaseTimeout as exc:
                        failure = JobFailure(f"no free GPU group for model {job.name!r} "
                                             f"within the job timeout: {exc}")
                for entry in todo:
                    stored = self.store.get(job.model_key, keys[entry.name])
                    if stored is not None:
                        entries[entry.name] = stored
            set_key = digest(sorted(keys.values()))
            meta_path = self.store.root / "jobs" / f"{job.model_key}-{set_key}.json"
            recorded = None
            record = self._record(job, run, partial=bool(cached)) if run is not None else None
            if run is not None and failure is None and not cached:
                # a wall time means something for the whole set of tasks only
                write_json_atomic(meta_path, {"wall_s": run.wall_s, "job": record})
            elif run is None and meta_path.exists():
                try:
                    meta = json.loads(meta_path.read_text())
                    recorded = float(meta["wall_s"])
                    record = jobrecord.recorded(meta)
                except (OSError, ValueError, KeyError, TypeError):
                    recorded = None
        outcome = JobOutcome(job, entries, cached, failure,
                             run.wall_s if run is not None and not cached else None,
                             recorded if run is None else None)
        outcome.partial = run is not None and bool(cached)
        outcome.skip_reason = skip if todo else None
        outcome.record = record
        if entries:
            outcome.results_path = self._write_results(job, entries, record)
        return outcome

    def _run_dir(self, job: EvalJob) -> Path:
        return self.settings.runs_dir / f"{job.name}-{job.job_id[:8]}"

    def _record(self, job: EvalJob, run: WorkerRun, *, partial: bool) -> dict[str, Any]:
        """The job record of this session's run, from its run directory."""
        plan = self.plan(job)
        used = self._used.pop(job_key(job), [])
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
        spec = self.worker_spec(job, todo, keys, run_dir, plan)
        timeout = job.model.timeout or self.settings.timeout
        started = time.perf_counter()
        owner = f"pytest-disteval {job.suite.path}::{job.name}"
        if len(plan.groups) == 1 and not self.executor.remote:
            # one replica: any free group will do (xdist workers and other sessions share)
            lease = (self.leases.acquire_any(plan.candidates or plan.groups, timeout=timeout,
                                             owner=owner) if plan.groups[0] else None)
            try:
                group = list(lease.gpus) if lease else []
                # only the group's variables: the worker's own environment must win
                run = self._replica(job, plan, group, lease.env({}) if lease else {},
                                    spec, run_dir / "spec.json",
                                    f"{job.name}-{job.job_id[:8]}", timeout)
            finally:
                if lease is not None:
                    lease.release()
            return run, self._failure(job, run, run_dir / "error.json", timeout)
        # dp > 1: every replica builds the full request list and executes its shard;
        # the response store sits beside the entries, so --disteval-no-cache and
        # --disteval-clear-cache cover it too
        responses = self.store.root / "responses" / f"{job.model_key}.sqlite"
        runs: dict[int, WorkerRun] = {}
        # each group is leased once for the whole job (packed replicas share it); which
        # groups is decided now, among the free ones, so side-by-side jobs never collide
        wanted = len({tuple(g.uuid for g in group) for group in plan.groups})
        chosen: list[list[GPU]] = []
        leases: dict[tuple[str, ...], Lease] = {}
        # a remote executor hands out GPUs itself (Ray's resources): no leases here
        if plan.groups[0] and not self.executor.remote:
            with self._alloc:
                for _ in range(wanted):
                    taken = {g.uuid for group in chosen for g in group}
                    free = [c for c in plan.candidates if not taken & {g.uuid for g in c}]
                    lease = self.leases.acquire_any(free, timeout=timeout, owner=owner)
                    chosen.append(list(lease.gpus))
                    leases[tuple(g.uuid for g in lease.gpus)] = lease
            pack = len(plan.groups) // wanted
            replica_groups = [group for group in chosen for _ in range(pack)]
        else:
            replica_groups = plan.groups
        distinct = chosen or (plan.groups if self.executor.remote else plan.groups[:1])

        def env_of(group: list[GPU]) -> dict[str, str]:
            lease = leases.get(tuple(g.uuid for g in group))
            return lease.env({}) if lease else {}

        def shard(index: int, group: list[GPU], attempt: int) -> None:
            shard_spec = replace(spec, mode="shard", responses=responses,
                                 shard=ShardSpec(index, len(plan.groups)),
                                 error_path=run_dir / f"error-{index}.json",
                                 meta_path=run_dir / f"meta-shard{index}.json",
                                 run_dir=run_dir)
            name = f"{job.name}-{job.job_id[:8]}-shard{index}" + (f"-retry{attempt}"
                                                                    if attempt else "")
            runs[index] = self._replica(job, plan, group, env_of(group), shard_spec,
                                        run_dir / f"spec-shard{index}.json", name, timeout)

        # the scoring worker starts now: its start-up (imports, task index) overlaps the
        # shards'; it waits for `go` before it reads the store
        go = run_dir / "score-go.json"
        score_runs: list[WorkerRun] = []

        def start_scorer() -> None:
            score_runs.append(self._replica(
                job, plan, [], {}, replace(spec, mode="score", responses=responses,
                                          wait_for=go, session_pid=os.getpid()),
                run_dir / "spec-score.json", f"{job.name}-{job.job_id[:8]}-score", timeout))

        scorer = threading.Thread(target=start_scorer, daemon=True)
        scorer.start()
        try:
            threads = [threading.Thread(target=shard, args=(i, g, 0), daemon=True)
                       for i, g in enumerate(replica_groups)]
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    thread.join()
            except BaseException:
                self.executor.kill_all()  # Ctrl-C lands here; the shard workers die with it
                raise
            for index in sorted(runs):
                if runs[index].returncode != 0:
                    # once, on another group: what the shard stored is not redone
                    shard(index, _other_group(distinct, replica_groups[index]), 1)
        finally:
            for lease in leases.values():
                lease.release()
        failed = [i for i in sorted(runs) if runs[i].returncode != 0]
        write_json_atomic(go, {"go": not failed, "why": f"shard {failed[0]} failed"
                               if failed else ""})
        try:
            scorer.join()
        except BaseException:
            kill_all()
            raise
        if failed:
            run = runs[failed[0]]
            failure = self._failure(job, run, run_dir / f"error-{failed[0]}.json", timeout)
            if failure is not None:
                failure.message = (f"shard {failed[0]} of {len(plan.groups)} failed twice "
                                   f"(the retry ran on another group): {failure.message}")
            return run, failure
        (score,) = score_runs
        score.wall_s = time.perf_counter() - started
        return score, self._failure(job, score, run_dir / "error.json", timeout)

    def _replica(self, job: EvalJob, plan: JobPlan, group: list[GPU], group_env: dict[str, str],
                 spec: WorkerSpec, spec_path: Path, name: str,
                 timeout: float | None) -> WorkerRun:
        """Start one worker on ``group`` (already leased by the caller) and wait for it."""
        backend = BACKENDS[job.model.backend]
        if group and plan.on_gpu:
            spec = replace(spec, device=spec.device or "cuda")
        write_json_atomic(spec_path, spec.to_dict())
        layout = plan.layout if spec.mode != "score" else Layout()
        command = [*backend.launch(self.settings.python, layout), str(spec_path)]
        log_path = self.settings.logs_dir / f"{name}.log"
        env = _backend_env(backend, group_env)
        replicas = len(plan.groups)
        if replicas > 1 and spec.mode == "shard":
            # replicas share the host's cores (packed on a GPU, or on the CPU): without
            # this each starts one thread per core and they fight over them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // replicas)))
        record = {"job": job_key(job), "worker": name, "mode": spec.mode,
                  "gpus": [g.index for g in group], "session_pid": os.getpid()}
        self._audit({"event": "start", **record})
        if group and spec.mode != "score":
            with self._alloc:  # shard threads append side by side
                self._used.setdefault(job_key(job), []).append(group)
        # the scoring worker loads no model: it runs here, beside the session's store
        executor = self.executor if spec.mode != "score" else self._local
        task = WorkerTask(command, env, log_path, timeout, spec, spec_path, name, len(group))
        # what a forked worker's server must have imported (None: never forked)
        task.extra["preload"] = self._preload(backend, spec.mode)
        if group and plan.on_gpu and not executor.remote:
            # NVML beside the worker: the group's timeline, kept in the run directory,
            # where the job record (jobrecord.gpu_section) reads every figure from. A
            # remote executor samples on the worker's node and writes the same file
            with GpuSampler([g.index for g in group]) as sampler:
                run = executor.run(task)
            write_json_atomic(spec_path.parent / f"gpu-{name}.json", sampler.timeline())
        else:
            run = executor.run(task)
        self._audit({"event": "end", **record, "returncode": run.returncode,
                     "wall_s": round(run.wall_s, 3)})
        return run

    def _failure(self, job: EvalJob, run: WorkerRun, error_file: Path,
                 timeout: float | None) -> JobFailure | None:
        if run.returncode == 0:
            return None
        message = ""
        if error_file.exists():
            try:
                message = str(json.loads(error_file.read_text())["message"])
            except (OSError, ValueError, KeyError):
                message = ""
        if run.timed_out:
            message = f"worker killed after the job timeout of {timeout:.0f}s"
        elif not message:
            message = f"worker for model {job.name!r} exited with code {run.returncode}"
        elif run.returncode != EXIT_BAD_REQUEST:
            message = f"worker for model {job.name!r} failed: {message}"
        return JobFailure(message, run.command, run.returncode, run.log_path,
                          log_tail(run.log_path), run.timed_out)

    def _audit(self, record: dict[str, Any]) -> None:
        """Worker starts and ends in <dir>/workers.jsonl: what ran, where, when."""
        record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = self.settings.base_dir / "workers.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:  # small appends are atomic
            handle.write(json.dumps(record) + "\n")

    # -- planning --------------------------------------------------------------

    def _plan_failure(self, job: EvalJob) -> JobFailure | None:
        try:
            self.plan(job)
        except LayoutError as exc:
            return JobFailure(f"cannot lay out model {job.name!r}: {exc}")
        return None

    @staticmethod
    def _backend_missing(job: EvalJob) -> str | None:
        backend = BACKENDS[job.model.backend]
        if backend.available():
            return None
        return (f"backend {backend.name!r} is not installed (no module {backend.module!r}); "
                f"install it with: {backend.install_hint}")

    def inventory_source(self) -> str | None:
        inv = self.inventory()
        return inv.source if inv is not None else None

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

    def _sharing(self) -> int:
        """How many jobs run side by side: all of them when jobs are prefetched."""
        return len(self.jobs) if self._prefetching else 1

    def _preload(self, backend: Backend, mode: str | None) -> tuple[str, ...] | None:
        """What the forkserver must have imported to fork this worker; None: a subprocess.

        The same on the CPU and on GPUs: the server imports torch without initialising
        CUDA (executors/forkserver.py checks), and forked hf workers scored the same on
        an H200 (tests/test_gpu.py; docs/benchmarks.md section 7).
        """
        if self.settings.worker_start == "subprocess":
            return None
        return COMMON_PRELOAD if mode == "score" else backend.preload

    def start_line(self, job: EvalJob, plan: JobPlan) -> str | None:
        """How the job's local workers will start, for --disteval-plan."""
        if self.executor.remote:
            return None  # Ray's own lines say where the actors go
        backend = BACKENDS[job.model.backend]
        if self._preload(backend, "direct") is not None:
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
        every entry is stored (a warm rerun) or no backend forks (vllm, torchrun).
        """
        if self.executor.remote:
            return
        for job in self.jobs.values():
            backend = BACKENDS.get(job.model.backend)
            if backend is None or self._plan_failure(job):
                continue
            if self._preload(backend, "direct") is None:
                continue
            layout = self.plan(job).layout
            if backend.torchrun and layout.group_size > 1:
                continue
            job.set_split(layout.tp, layout.pp)
            if all(self.store.get(job.model_key, job.entry_key(e)) is not None
                   for e in job.entries):
                continue
            self._local.prestart(self.settings.python, backend.preload, _backend_env(backend))
            return

    def prefetch(self) -> None:
        """Start every job now, side by side on free groups; items then wait for theirs.

        Only with GPUs (real or fake): on a CPU the cores are one resource, jobs run in
        turn. Leases decide who runs where; a job waits for free groups.
        """
        plans = self.plan_all()
        if not self._prefetching:
            return
        groups = max(len(p.candidates) for p in plans.values()) or 1
        self._pool = ThreadPoolExecutor(max_workers=min(len(plans), groups),
                                        thread_name_prefix="disteval-job")
        for key in plans:
            self._futures[key] = self._pool.submit(self._run, self.jobs[key])

    def plan_all(self) -> dict[str, JobPlan]:
        """Plans of every job; with GPUs and several jobs, they will share the groups."""
        try:
            inv = self.inventory()
        except (NoGPUError, ValueError):
            inv = None  # each job's plan says why
        self._prefetching = (len(self.jobs) > 1 and inv is not None
                             and not self.settings.gpu.xdist_worker)
        self._plans.clear()
        plans = {}
        for key, job in self.jobs.items():
            try:
                plans[key] = self.plan(job)
            except LayoutError:
                continue  # its items fail with the message when they run
        if self._prefetching and all(not p.groups[0] for p in plans.values()):
            self._prefetching = False  # the models all run on the CPU: in turn
            self._plans.clear()
            plans = {k: self.plan(j) for k, j in self.jobs.items() if k in plans}
        return plans

    def plan(self, job: EvalJob) -> JobPlan:
        """The job's layout and groups; LayoutError says what to change."""
        key = job_key(job)
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

    def worker_spec(self, job: EvalJob, todo: list[TaskEntry], keys: dict[str, str],
                    run_dir: Path, plan: JobPlan) -> WorkerSpec:
        """The direct worker's spec; a shard's and the scorer's replace a few fields."""
        runs: dict[str, tuple[dict[str, Any], list[EntrySpec]]] = {}
        for entry in todo:
            # one simple_evaluate call per distinct settings: lm-eval takes them per call
            settings = entry.settings()
            runs.setdefault(digest(settings), (settings, []))[1].append(EntrySpec(
                task=entry.task, entry_key=keys[entry.name],
                path=self.store.path(job.model_key, keys[entry.name]), name=entry.name))
        model = job.model
        backend = BACKENDS[model.backend]
        return WorkerSpec(
            backend=model.backend, lm_eval_model=backend.lm_eval_model,
            install_hint=backend.install_hint, model_args=plan.model_args,
            batch_size=model.batch_size, device=model.device, gen_kwargs=model.gen_kwargs,
            include_paths=tuple(job.suite.include_paths), workdir=job.suite.workdir,
            all_local=all(_is_local(job, e) for e in todo), model_key=job.model_key,
            runs=tuple(RunSpec(settings, tuple(entries)) for settings, entries in runs.values()),
            error_path=run_dir / "error.json", meta_path=run_dir / "meta.json")

    def _write_results(self, job: EvalJob, entries: dict[str, dict[str, Any]],
                       record: dict[str, Any] | None = None) -> Path:
        model = job.model
        config: dict[str, Any] = {
            "model": BACKENDS[model.backend].lm_eval_model,
            "model_args": model.model_args,
            "batch_size": model.batch_size,
            "device": model.device,
            "gen_kwargs": model.gen_kwargs,
            "disteval": {"version": __version__, "suite": str(job.suite.path),
                         "model_key": job.model_key,
                         "entries": {name: {"settings": e["settings"], "key": e["entry_key"],
                                            "computed_at": e["computed_at"],
                                            "partial": e["settings"].get("limit") is not None}
                                     for name, e in entries.items()},
                         # a limit scores part of a task: such results are not the task's
                         "partial": any(e["settings"].get("limit") is not None
                                        for e in entries.values()),
                         "job": record},
        }
        if record is not None:
            config["disteval"]["job"] = record
        results = merge_entries(list(entries.values()), config)
        results["date"] = datetime.now(timezone.utc).timestamp()
        # the suite's path, not its name: two suites may share a name
        path = self.settings.results_dir / job.suite.path.with_suffix("") / f"{job.name}.json"
        write_json_atomic(path, results)
        return path


def _make_executor(settings: Settings, local: LocalExecutor) -> Executor:
    if settings.executor == "ray":
        from pytest_disteval.executors.ray import RayExecutor

        return RayExecutor(settings.ray_address, settings.base_dir / "workers.jsonl")
    return local


def job_key(job: EvalJob) -> str:
    # cheap (no hashing of weights): used at collection time for xdist grouping too
    return f"{job.suite.path}::{job.name}"


def _other_group(distinct: list[list[GPU]], group: list[GPU]) -> list[GPU]:
    """The next distinct group after ``group`` (itself when there is no other)."""
    keys = [tuple(g.uuid for g in d) for d in distinct]
    here = keys.index(tuple(g.uuid for g in group)) if group else 0
    return distinct[(here + 1) % len(distinct)]


def _is_local(job: EvalJob, entry: TaskEntry) -> bool:
    index = job.suite.task_index
    return (entry.local is not None and index is not None
            and all(sub in index for sub in entry.local.subtasks))


def _precheck(job: EvalJob, todo: list[TaskEntry]) -> JobFailure | None:
    """Problems worth reporting before a model is loaded."""
    for entry in todo:
        missing = missing_data_files(entry, job.suite.workdir)
        if missing:
            return JobFailure(
                f"task {entry.task!r} ({entry.local.path if entry.local else '?'}) reads "
                f"{', '.join(missing)}, not found relative to the suite's workdir "
                f"{job.suite.workdir} (set 'workdir' in the suite to change the base)")
    return None
