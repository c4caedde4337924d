"""Run a worker as a local subprocess in its own process group.

The whole group is killed on timeout and on Ctrl-C, so a backend's own children
(tokenizer pools, vLLM engine processes, torchrun ranks) never outlive the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import WorkerTask

# seconds a worker gets between SIGTERM and SIGKILL
TERM_GRACE_S = 5.0


@dataclass
class WorkerRun:
    command: list[str]
    returncode: int | None
    wall_s: float
    timed_out: bool
    log_path: Path


# workers alive now, from any thread: Ctrl-C in the main thread must reach them all
_ACTIVE: set[subprocess.Popen[bytes]] = set()
_ACTIVE_LOCK = threading.Lock()


def kill_all() -> None:
    """Kill the process group of every worker still running (Ctrl-C, session end)."""
    with _ACTIVE_LOCK:
        procs = list(_ACTIVE)
    for proc in procs:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    # the leader may be gone while members that ignored SIGTERM remain: kill the group
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass


def reap_group(pgid: int) -> None:
    """End what is left of an exited worker's process group: SIGTERM, a grace, SIGKILL."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return  # nothing left: the usual case
    deadline = time.monotonic() + TERM_GRACE_S
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.05)
    if not _group_alive(pgid):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies do not count: a PID 1
    that never reaps would otherwise make every wait run to its end)."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def run_worker(command: list[str], *, env: dict[str, str], log_path: Path,
               timeout: float | None, cwd: Path | None = None) -> WorkerRun:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("wb") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)
        with _ACTIVE_LOCK:
            _ACTIVE.add(proc)
        try:
            returncode: int | None = proc.wait(timeout=timeout)
            timed_out = False
            # the worker ends with os._exit (no interpreter teardown), so a child it started
            # (vLLM's engine core) is not shut down with it and would keep the GPU's memory
            reap_group(proc.pid)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            returncode, timed_out = None, True
        except BaseException:
            # Ctrl-C or an internal error: never leave an orphan worker behind
            kill_group(proc)
            raise
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(proc)
    return WorkerRun(command, returncode, time.perf_counter() - started, timed_out, log_path)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LocalExecutor:
    """The default executor: each worker a subprocess of this process, on this host."""

    name = "local"
    remote = False

    def run(self, task: WorkerTask) -> WorkerRun:
        return run_worker(task.command, env=task.env, log_path=task.log_path,
                          timeout=task.timeout)

    def kill_all(self) -> None:
        kill_all()

    def close(self) -> None:
        kill_all()
