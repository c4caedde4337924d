"""What the scheduler needs from an executor: run one worker, stop them all.

``local`` (executors/local.py) runs a worker as a subprocess of this process;
``ray`` (executors/ray.py) runs it in a Ray actor that holds the group's GPUs,
anywhere in a cluster. The scheduler plans, shards and scores the same way for
both; only where a worker runs, and who hands out the GPUs, differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_disteval.worker.spec import WorkerSpec


@dataclass
class WorkerRun:
    """What became of one worker: its exit code (None: killed), wall time and log."""

    command: list[str]
    returncode: int | None
    wall_s: float
    timed_out: bool
    log_path: Path
    forked: bool = False  # forked from the forkserver rather than started as a subprocess


@dataclass
class WorkerTask:
    """One worker to run: the command (spec path last), its spec, where its log goes."""

    command: list[str]
    env: dict[str, str]  # the full environment a local subprocess gets
    log_path: Path
    timeout: float | None
    spec: WorkerSpec
    spec_path: Path  # already written; a remote executor ships ``spec`` itself
    name: str  # unique per worker in the session: logs, actors
    group_size: int = 0  # GPUs the worker needs; 0 on the CPU
    extra: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    name: str
    # True: the executor, not this host's leases, hands out GPUs, and workers may run
    # where this host's files are not (they get shards only; responses come back)
    remote: bool

    def run(self, task: WorkerTask) -> WorkerRun: ...

    def kill_all(self) -> None: ...

    def close(self) -> None: ...
