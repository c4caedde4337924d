"""Run a worker on this host in its own process group: forked from the forkserver, or a subprocess.

The whole group is killed on timeout and on Ctrl-C, so a backend's own children
(tokenizer pools, vLLM engine processes, torchrun ranks) never outlive the run.
Workers whose backend forks cleanly are forked from a server that has imported
torch, transformers and lm-eval once (executors/forkserver.py) when the scheduler
says so (``WorkerTask.extra["preload"]``); the others, and all of them with
``--disteval-worker-start subprocess``, start as subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pytest_disteval.executors.base import WorkerRun, WorkerTask
from pytest_disteval.executors.forkserver import ForkServer, proc_stat

WORKER_MODULE = "pytest_disteval.worker"
# auto (the default) and forkserver: forked wherever the backend allows, CPU and GPU;
# auto stays a name of its own so that a case found unsafe can leave it later
START_METHODS = ("auto", "forkserver", "subprocess")
MAX_SERVERS = 2  # one per set of imports (an hf job's, a scoring worker's): no more

# seconds a worker gets between SIGTERM and SIGKILL
TERM_GRACE_S = 5.0


# workers alive now, from any thread: Ctrl-C in the main thread must reach them all
# (subprocess.Popen or forkserver.ForkedWorker: both have pid and wait(timeout))
_ACTIVE: set[Any] = set()
_ACTIVE_LOCK = threading.Lock()


def kill_all() -> None:
    """Kill the process group of every worker still running (Ctrl-C, session end)."""
    with _ACTIVE_LOCK:
        procs = list(_ACTIVE)
    for proc in procs:
        kill_group(proc)


def kill_group(proc: Any) -> None:
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
        fields = proc_stat(entry)
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def run_worker(command: list[str], *, env: dict[str, str], log_path: Path,
               timeout: float | None, cwd: Path | None = None,
               forkserver: ForkServer | None = None) -> WorkerRun:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("wb") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc: Any = None
        if forkserver is not None:
            proc = forkserver.spawn(command[3:], env, log_path, cwd, timeout)
            if proc is None:
                why = forkserver.info.get("error") or "the forkserver is gone"
                log.write(f"[disteval] not forked ({why}): started as a subprocess\n".encode())
                log.flush()
        forked = proc is not None
        if proc is None:
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
    return WorkerRun(command, returncode, time.perf_counter() - started, timed_out, log_path,
                     forked)


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
    """The default executor: each worker a process of this host, in its own group."""

    name = "local"
    remote = False

    def __init__(self, start: str = "auto", logs_dir: Path | None = None) -> None:
        self.start = start
        self.logs_dir = logs_dir
        self._servers: list[ForkServer] = []
        self._lock = threading.Lock()

    def run(self, task: WorkerTask) -> WorkerRun:
        server = self._server_for(task.command, task.env, task.extra.get("preload"))
        return run_worker(task.command, env=task.env, log_path=task.log_path,
                          timeout=task.timeout, forkserver=server)

    def prestart(self, python: str, preload: tuple[str, ...] | None,
                 env: dict[str, str]) -> None:
        """Start the forkserver a worker will need now, so its imports overlap the rest."""
        self._server(python, env, preload)

    def _server_for(self, command: list[str], env: dict[str, str],
                    preload: tuple[str, ...] | None) -> ForkServer | None:
        """The server that can fork this worker's command; None: a subprocess."""
        if len(command) != 4 or command[1:3] != ["-m", WORKER_MODULE]:
            return None  # torchrun and other launchers
        return self._server(command[0], env, preload)

    def _server(self, python: str, env: dict[str, str],
                preload: tuple[str, ...] | None) -> ForkServer | None:
        """The running server with these imports and environment, or a new one."""
        if self.start == "subprocess" or preload is None or not sys.platform.startswith("linux"):
            return None  # forking is off, not asked for, or unavailable
        with self._lock:
            self._servers = [s for s in self._servers if s.alive]
            for server in self._servers:
                if server.python == python and server.compatible(preload, env):
                    return server
            if len(self._servers) >= MAX_SERVERS or self.logs_dir is None:
                return None
            # beside the workers' logs, not among them: one log there is one worker run
            log = self.logs_dir / "forkserver" / f"{os.getpid()}-{len(self._servers)}.log"
            server = ForkServer(python, preload, env, log)
            self._servers.append(server)
            return server

    def kill_all(self) -> None:
        kill_all()

    def close(self) -> None:
        kill_all()
        with self._lock:
            servers, self._servers = self._servers, []
        for server in servers:
            server.close()
