"""Launching one worker: its spec, environment, preload, the executor call, its failure.

The scheduler and a sharded run (jobs/sharded.py) lease the groups; a ``Launcher``
starts one worker on a group it is handed and waits for it: the spec written to
its run directory, the backend's environment, the forkserver's imports, NVML
beside it on a local GPU, a line in ``workers.jsonl`` at its start and end.
``failure`` turns a worker that did not deliver into the ``JobFailure`` its items
render.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_disteval.backends import BACKENDS, Backend
from pytest_disteval.executors.base import Executor, WorkerRun, WorkerTask
from pytest_disteval.executors.forkserver import COMMON_PRELOAD
from pytest_disteval.executors.local import LocalExecutor, log_tail
from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.gpu.monitor import GpuSampler
from pytest_disteval.jobs.fingerprint import digest
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.plan.layout import Layout
from pytest_disteval.plan.planner import JobPlan
from pytest_disteval.settings import Settings
from pytest_disteval.store.results import ResultStore, write_json_atomic
from pytest_disteval.suite.model import TaskEntry
from pytest_disteval.worker.spec import EXIT_BAD_REQUEST, EntrySpec, RunSpec, WorkerSpec

# set in every worker: a quality gate must not depend on what a hub serves today
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


# how transformers, huggingface_hub and datasets say an offline worker missed a file
_OFFLINE_MISS = re.compile(r"couldn't connect to 'https://huggingface\.co'|OfflineModeIsEnabled|"
                           r"LocalEntryNotFoundError|offline mode is enabled", re.IGNORECASE)


@dataclass
class JobFailure:
    """Why a job's worker did not deliver; rendered in every item that depended on it."""

    message: str
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    log_path: Path | None = None
    tail: str = ""
    timed_out: bool = False
    # found before any worker started (jobs/precheck.py): the same for every item of the
    # job, so its first item tells it and the others point there
    precheck: bool = False

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


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    # the worker imports this package; make sure it resolves to this very copy
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def backend_env(backend: Backend, group_env: dict[str, str] | None = None) -> dict[str, str]:
    """A worker's environment with the backend's defaults (the user's own values win)."""
    env = worker_env(group_env)
    for name, value in backend.env.items():
        env.setdefault(name, value)
    return env


def failure(job: EvalJob, run: WorkerRun, error_file: Path,
            timeout: float | None) -> JobFailure | None:
    """What the items of ``job`` say about a worker that exited non-zero; None if it did not."""
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
    if not run.timed_out and _OFFLINE_MISS.search(message):
        # what the precheck (jobs/precheck.py) could not see, e.g. a file of a snapshot
        message += ("\nthe workers run offline on purpose (the plugin sets "
                    f"{', '.join(k for k in OFFLINE_ENV if k.endswith('OFFLINE'))}): what the "
                    "job reads must be on this machine beforehand; pytest --disteval-doctor "
                    "says what is missing and the hf download command that gets it")
    return JobFailure(message, run.command, run.returncode, run.log_path,
                      log_tail(run.log_path), run.timed_out)


def worker_spec(job: EvalJob, todo: list[TaskEntry], keys: dict[str, str], run_dir: Path,
                plan: JobPlan, store: ResultStore, *, export_samples: bool = False) -> WorkerSpec:
    """The direct worker's spec; a shard's and the scorer's replace a few fields."""
    runs: dict[str, tuple[dict[str, Any], list[EntrySpec]]] = {}
    for entry in todo:
        # one simple_evaluate call per distinct settings: lm-eval takes them per call
        settings = entry.settings()
        runs.setdefault(digest(settings), (settings, []))[1].append(EntrySpec(
            task=entry.task, entry_key=keys[entry.name],
            path=store.path(job.model_key, keys[entry.name]), name=entry.name,
            samples_at=None if entry.samples_at is None else str(entry.samples_at)))
    model = job.model
    backend = BACKENDS[model.backend]
    return WorkerSpec(
        backend=model.backend, lm_eval_model=backend.lm_eval_model,
        install_hint=backend.install_hint, model_args=plan.model_args,
        batch_size=model.batch_size, max_batch_size=model.max_batch_size,
        device=model.device, gen_kwargs=model.gen_kwargs,
        include_paths=tuple(job.suite.include_paths), workdir=job.suite.workdir,
        all_local=all(_is_local(job, e) for e in todo), model_key=job.model_key,
        runs=tuple(RunSpec(settings, tuple(entries)) for settings, entries in runs.values()),
        error_path=run_dir / "error.json", meta_path=run_dir / "meta.json",
        export_samples=export_samples)


def _is_local(job: EvalJob, entry: TaskEntry) -> bool:
    index = job.suite.task_index
    return (entry.local is not None and index is not None
            and all(sub in index for sub in entry.local.subtasks))


class Launcher:
    """Starts one worker on a group already leased, waits for it, keeps what it used."""

    def __init__(self, settings: Settings, executor: Executor, local: LocalExecutor) -> None:
        self.settings = settings
        self.executor = executor
        self.local = local  # the scoring worker loads no model: it runs here, always
        self._lock = threading.Lock()  # shard threads record their groups side by side
        self._used: dict[str, list[list[GPU]]] = {}  # the groups each job's replicas ran on

    def preload(self, backend: Backend, mode: str | None) -> tuple[str, ...] | None:
        """What the forkserver must have imported to fork this worker; None: a subprocess.

        The same on the CPU and on GPUs: the server imports torch without initialising
        CUDA (executors/forkserver.py checks), and forked hf workers scored the same on
        an H200 (tests/integration/test_gpu.py; docs/benchmarks.md section 7).
        """
        if self.settings.worker_start == "subprocess":
            return None
        return COMMON_PRELOAD if mode == "score" else backend.preload

    def used(self, job: EvalJob) -> list[list[GPU]]:
        """The groups the job's replicas ran on since the last call (its record reads them)."""
        with self._lock:
            return self._used.pop(job.key, [])

    def launch(self, job: EvalJob, plan: JobPlan, group: list[GPU], group_env: dict[str, str],
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
        env = backend_env(backend, group_env)
        replicas = len(plan.groups)
        if replicas > 1 and spec.mode == "shard":
            # replicas share the host's cores (packed on a GPU, or on the CPU): without
            # this each starts one thread per core and they fight over them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // replicas)))
        record = {"job": job.key, "worker": name, "mode": spec.mode,
                  "gpus": [g.index for g in group], "session_pid": os.getpid()}
        self.audit({"event": "start", **record})
        if group and spec.mode != "score":
            with self._lock:
                self._used.setdefault(job.key, []).append(group)
        executor = self.executor if spec.mode != "score" else self.local
        task = WorkerTask(command, env, log_path, timeout, spec, spec_path, name, len(group))
        # what a forked worker's server must have imported (None: never forked)
        task.extra["preload"] = self.preload(backend, spec.mode)
        if group and plan.on_gpu and not executor.remote:
            # NVML beside the worker: the group's timeline, kept in the run directory,
            # where the job record (jobrecord.gpu_section) reads every figure from. A
            # remote executor samples on the worker's node and writes the same file
            with GpuSampler([g.index for g in group]) as sampler:
                run = executor.run(task)
            write_json_atomic(spec_path.parent / f"gpu-{name}.json", sampler.timeline())
        else:
            run = executor.run(task)
        self.audit({"event": "end", **record, "returncode": run.returncode,
                    "wall_s": round(run.wall_s, 3)})
        return run

    def audit(self, record: dict[str, Any]) -> None:
        """Worker starts and ends in <dir>/workers.jsonl: what ran, where, when."""
        record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = self.settings.base_dir / "workers.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:  # small appends are atomic
            handle.write(json.dumps(record) + "\n")
