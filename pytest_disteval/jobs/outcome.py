"""The jobs of a session and their outcomes: each job runs once, its items read the outcome.

``JobRegistry`` knows every job (one per suite and model, entries added as items
ask), runs each on first demand, or hands back the future of a prefetched one.
``JobOutcome`` is what the items read: stored entries, the failure, wall times
and the job record. The results file and the recorded wall time of a set of
entries are written here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_disteval import __version__
from pytest_disteval.backends import BACKENDS
from pytest_disteval.jobs import record as jobrecord
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.launch import JobFailure
from pytest_disteval.store.results import merge_entries, write_json_atomic
from pytest_disteval.suite.model import TaskEntry


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
    record: dict[str, Any] | None = None  # the job record (jobs/record.py): what budgets read
    warned: bool = False  # the GPU imbalance warning was issued (once per job)
    told_by: str | None = None  # the item that told a precheck failure (the others point to it)


class JobRegistry:
    """Every job of the session by its key, run once each by ``run``."""

    def __init__(self, run: Callable[[EvalJob], JobOutcome],
                 interrupted: Callable[[], None]) -> None:
        self._run = run
        self._interrupted = interrupted  # Ctrl-C while waiting: stop the prefetched jobs' workers
        self.jobs: dict[str, EvalJob] = {}
        self.outcomes: dict[str, JobOutcome] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[JobOutcome]] = {}

    def job_for(self, job: EvalJob, entries: Iterable[TaskEntry]) -> EvalJob:
        """Register ``job`` (or return the one already known) and add entries to it."""
        known = self.jobs.setdefault(job.key, job)
        for entry in entries:
            known.add(entry)
        return known

    def outcome(self, job: EvalJob) -> JobOutcome:
        key = job.key
        job = self.jobs.setdefault(key, job)
        future = self._futures.pop(key, None)
        if future is not None:
            try:
                self.outcomes[key] = future.result()
            except BaseException:
                self._interrupted()
                raise
        known = self.outcomes.get(key)
        # entries added after the job ran (the fixture, a later call) need another run
        # (a skipped job, predicted only or without its backend, has no entries to add to)
        if known is None or any(e.name not in known.entries and known.failure is None
                                and not known.skip_reason for e in job.entries):
            self.outcomes[key] = self._run(job)
        return self.outcomes[key]

    def start(self, keys: Iterable[str], workers: int) -> None:
        """Run these jobs now, ``workers`` side by side; ``outcome`` then waits for each."""
        keys = list(keys)
        self._pool = ThreadPoolExecutor(max_workers=min(len(keys), workers),
                                        thread_name_prefix="disteval-job")
        for key in keys:
            self._futures[key] = self._pool.submit(self._run, self.jobs[key])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def write_recorded(meta_path: Path, wall_s: float, record: dict[str, Any] | None) -> None:
    """Keep a whole set of entries' wall time and job record for the runs that reuse it."""
    write_json_atomic(meta_path, {"wall_s": wall_s, "job": record})


def read_recorded(meta_path: Path) -> tuple[float | None, dict[str, Any] | None]:
    """The wall time and job record kept when a set of entries was computed; Nones if none."""
    if not meta_path.exists():
        return None, None
    try:
        meta = json.loads(meta_path.read_text())
        return float(meta["wall_s"]), jobrecord.recorded(meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def write_results(path: Path, job: EvalJob, entries: dict[str, dict[str, Any]],
                  record: dict[str, Any] | None = None, samples: Path | None = None) -> Path:
    """The job's results file: lm-eval's shape, with the entries' keys and the job record."""
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
                                        "partial": _partial(e["settings"])}
                                 for name, e in entries.items()},
                     # a limit scores part of a task: such results are not the task's
                     "partial": any(_partial(e["settings"]) for e in entries.values()),
                     "job": record},
    }
    if samples is not None:
        # the per-sample export (--disteval-samples): the reports link it
        config["disteval"]["samples"] = str(samples)
    results = merge_entries(list(entries.values()), config)
    results["date"] = datetime.now(timezone.utc).timestamp()
    write_json_atomic(path, results)
    return path


def _partial(settings: dict[str, Any]) -> bool:
    # a limit or chosen doc ids: part of the task's documents
    return settings.get("limit") is not None or settings.get("samples") is not None
