"""EvalJob: one model configuration and the task entries selected for it.

Items are grouped into jobs so a model loads once per session however many
items need it, and only for the entries whose items survived ``-k``/``-m``.
A job's identity lives here, in its three strengths: ``key`` (the suite's path and
the model's name: cheap, known at collection, what the session and xdist group
by), ``job_id`` (what it runs with: logs and run directories) and ``model_key``
(everything about the model that changes a score), with one ``entry_key`` per
task entry (task files, data files and settings), so cached results are shared
by suites and by the fixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from pytest_disteval.backends import BACKENDS
from pytest_disteval.jobs.fingerprint import (
    digest,
    files_digest,
    model_fingerprint,
    package_version,
)
from pytest_disteval.suite.localtasks import LocalTask, TaskIndex
from pytest_disteval.suite.model import ModelSpec, Suite, TaskEntry

# bumped when the stored entry format or the meaning of a key changes
CACHE_FORMAT = 1


@dataclass
class EvalJob:
    """One model on one set of task entries, run by one worker."""

    model: ModelSpec
    suite: Suite
    entries: list[TaskEntry] = field(default_factory=list)
    # (tp, pp) of the plan: a split model computes in another order (dp does not matter:
    # sharded scores are exact); set by the scheduler before the keys are read
    split: tuple[int, int] = (1, 1)
    _names: set[str] = field(default_factory=set, repr=False)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def key(self) -> str:
        # cheap (no hashing of weights): used at collection time for xdist grouping too
        return f"{self.suite.path}::{self.name}"

    @property
    def run_name(self) -> str:
        """The job's run directory and the prefix of its workers' names and logs."""
        return f"{self.name}-{self.job_id[:8]}"

    @cached_property
    def job_id(self) -> str:
        # the same model in two suites with other include paths is another job
        include = [str(p) for p in self.suite.include_paths]
        # the suite's path too: logs and run dirs of two suites never collide
        return digest({"model": self.model_key, "include": include, "suite": str(self.suite.path),
                       "workdir": str(self.suite.workdir)})[:16]

    @cached_property
    def model_identity(self) -> dict[str, Any]:
        args = self.model.model_args
        return {
            "format": CACHE_FORMAT,
            "backend": self.model.backend,
            "model_args": args,
            "fingerprint": model_fingerprint(self.model.weights, args.get("revision")),
            "device": self.model.device,
            "split": list(self.split),
            "gen_kwargs": self.model.gen_kwargs,
            # the other eval keys are each entry's (TaskEntry.settings, in entry_key)
            **({"max_batch_size": self.model.max_batch_size}
               if self.model.max_batch_size is not None else {}),
            "versions": {name: package_version(name)
                         for name in ("lm_eval", *BACKENDS[self.model.backend].score_packages)},
        }

    @cached_property
    def model_key(self) -> str:
        return digest(self.model_identity)

    def entry_identity(self, entry: TaskEntry) -> dict[str, Any]:
        index = self.suite.task_index
        local = entry.local
        files: dict[str, str] = {}
        if local is not None and index is not None:
            files = files_digest(_task_files(local, index, self.suite.workdir), self.suite.workdir)
        return {"task": entry.task, "settings": entry.settings(), "files": files,
                "local": local is not None}

    def entry_key(self, entry: TaskEntry) -> str:
        return digest({"model": self.model_key, "entry": self.entry_identity(entry)})

    def add(self, entry: TaskEntry) -> None:
        if not self._names and self.entries:
            self._names.update(e.name for e in self.entries)
        if entry.name not in self._names:  # a set: suites of 10k tasks must not go quadratic
            self._names.add(entry.name)
            self.entries.append(entry)

    def set_split(self, tp: int, pp: int) -> None:
        """Take the plan's (tp, pp); the keys derived from the old split are dropped."""
        if (tp, pp) != self.split:
            self.split = (tp, pp)
            for cached in ("model_identity", "model_key", "job_id"):
                self.__dict__.pop(cached, None)


def _task_files(local: LocalTask, index: TaskIndex, workdir: Path,
                seen: set[str] | None = None) -> list[Path]:
    """The files that decide a local task's requests: YAML chain, helpers, data."""
    seen = seen if seen is not None else set()
    if local.name in seen:
        return []
    seen.add(local.name)
    files = list(local.chain or [local.path])
    # `!function utils.fn` helpers: Python modules beside each YAML of the chain
    for yaml_file in files[:]:
        files.extend(_python_files(yaml_file.parent))
    for spec in local.data_files():
        files.append(workdir / spec)
    dataset_path = local.dataset_path()
    if dataset_path and (workdir / dataset_path).exists():
        base = workdir / dataset_path
        files.extend(base.rglob("*") if base.is_dir() else [base])
    for sub in local.subtasks:
        child = index.get(sub)
        if child is not None:
            files.extend(_task_files(child, index, workdir, seen))
    return files


@lru_cache(maxsize=4096)
def _python_files(directory: Path) -> tuple[Path, ...]:
    # listed once per session: a directory of 1,000 task YAMLs is scanned once, not 1,000 times
    return tuple(sorted(p for p in directory.iterdir() if p.suffix == ".py"))


def missing_data_files(entry: TaskEntry, workdir: Path) -> list[str]:
    local = entry.local
    if local is None:
        return []
    return [spec for spec in local.data_files() if not (workdir / spec).exists()]
