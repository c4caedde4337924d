"""Workers forked from a process that has already imported torch, transformers and lm-eval.

Why: on the H200 a worker spent 10-15 s importing before its model was on the GPU
(``benchmarks/profile_load.py``: torch 3-4 s, transformers' model classes 7 s,
among them sklearn and torch.distributed.tensor; building the 1.1B model itself
took 0.8 s). Every worker paid that again: each job, each dp shard, each packed
replica. The forkserver pays it once per session, started as soon as a job needs
a worker (its imports overlap the preflight and the other workers' start), and
forks each worker from that state, as ``multiprocessing``'s forkserver does.

Server (``python -m pytest_disteval.executors.forkserver_main MODULE...``, in
executors/forkserver_main.py): imports the modules, says whether it is ready on
its protocol pipe (one JSON object a line), then forks one child per request.
A child starts a session of its own (the executor kills workers by process
group), points stdout and stderr at the worker's log, takes the worker's
environment and runs ``pytest_disteval.worker``. The server reaps its children
and reports each exit status.

Forking is safe only while the server has not initialised CUDA and runs no other
thread: the server checks both after importing and refuses (the executor then
starts plain subprocesses) otherwise. CUDA_VISIBLE_DEVICES is read when CUDA
initialises, which happens in the child, so each worker still sees only its group.

Client (``ForkServer``): used by executors/local.py for the workers whose backend
is known to fork cleanly (backends.py, ``preload``); everything else, and any
worker whose environment differs from the server's in a variable that the
imported modules may already have read, starts as a subprocess as before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

# variables a worker may set differently from the server's environment: read only
# when CUDA initialises, when torch is told (the child calls set_num_threads), or at
# run time. Any other difference (HF_HOME, an offline flag, PYTHONPATH...) may have
# been read by an imported module already: such a worker starts as a subprocess
PER_WORKER_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES",
                  "ROCR_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                  "PYTHONUNBUFFERED")
PER_WORKER_PREFIXES = ("DISTEVAL_", "PYTEST_")

# the modules every worker imports (the scoring worker needs no more)
COMMON_PRELOAD = ("lm_eval", "lm_eval.api.registry", "lm_eval.tasks", "lm_eval.evaluator",
                  "pytest_disteval.worker.main", "pytest_disteval.worker.sharding")

READY_TIMEOUT_S = 600.0  # an import that takes longer is a broken server: subprocesses
REPLY_TIMEOUT_S = 60.0  # a fork is milliseconds; no answer means the server is gone


def per_worker(name: str) -> bool:
    return name in PER_WORKER_ENV or name.startswith(PER_WORKER_PREFIXES)


def env_difference(server: dict[str, str], worker: dict[str, str]) -> list[str]:
    """Variables that differ between the two environments and may not."""
    names = set(server) | set(worker)
    return sorted(n for n in names if server.get(n) != worker.get(n) and not per_worker(n))


def server_env(env: dict[str, str]) -> dict[str, str]:
    """A worker's environment without the per-worker variables: the server's."""
    return {k: v for k, v in env.items() if not per_worker(k)}


class ForkedWorker:
    """A forked worker, with the part of Popen's interface the executor uses."""

    def __init__(self, pid: int, server: ForkServer, status: Path) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()
        self._server = server
        self._status = status

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        self._status.unlink(missing_ok=True)
        self._done.set()

    def _lost(self) -> int:
        """The status the child wrote itself; killed (-9) when it wrote none."""
        try:
            return int(self._status.read_text())
        except (OSError, ValueError):
            return -signal.SIGKILL

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.2):
            if not self._server.alive and not _running(self.pid):
                # the server died before it could report: the child's own word, if any
                self._exited(self._lost())
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


def proc_stat(proc_dir: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state first, the
    process group third); None when the process is gone."""
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
    return stat.rsplit(")", 1)[-1].split()


def _running(pid: int) -> bool:
    fields = proc_stat(Path(f"/proc/{pid}"))
    return fields is not None and bool(fields) and fields[0] != "Z"


class ForkServer:
    """One server process; ``spawn`` forks a worker from it."""

    def __init__(self, python: str, modules: tuple[str, ...], env: dict[str, str],
                 log_path: Path) -> None:
        self.python = python
        self.modules = frozenset(modules)
        self.env = server_env(env)
        self.log_path = log_path
        self.info: dict[str, Any] = {}
        self.alive = True
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._replies: dict[int, Any] = {}
        self._reply = threading.Condition(self._lock)
        self._workers: dict[int, ForkedWorker] = {}
        self._early: dict[int, int] = {}  # exits reported before the reply was read
        self._started = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [python, "-m", "pytest_disteval.executors.forkserver_main", *modules],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env,
                start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="disteval-forkserver",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "ready" in message:
                self.info = message
                if not message["ready"]:
                    self.alive = False
                self._ready.set()
            elif "exit" in message:
                with self._lock:
                    worker = self._workers.pop(message["exit"], None)
                    if worker is None:
                        self._early[message["exit"]] = message["returncode"]
                if worker is not None:
                    worker._exited(message["returncode"])
            elif "id" in message:
                with self._reply:
                    self._replies[message["id"]] = message["pid"]
                    self._reply.notify_all()
        self.alive = False
        if not self.info:
            self.info = {"ready": False, "error": f"the forkserver exited "
                         f"(status {self.proc.wait()}) before it was ready; see "
                         f"{self.log_path}"}
        self._ready.set()
        with self._reply:
            self._reply.notify_all()

    def ready(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) for the imports; False: no worker can be forked now."""
        limit = READY_TIMEOUT_S - (time.monotonic() - self._started)
        if not self._ready.wait(max(0.0, min(limit, timeout if timeout else limit))):
            if time.monotonic() - self._started >= READY_TIMEOUT_S:
                self.info = {"ready": False,
                             "error": f"its imports took over {READY_TIMEOUT_S:.0f} s"}
                self.close()
            return False  # not ready within the worker's own timeout: a subprocess
        return bool(self.info.get("ready")) and self.alive

    def compatible(self, modules: tuple[str, ...], env: dict[str, str]) -> bool:
        return (self.alive and self.modules >= set(modules)
                and not env_difference(self.env, env))

    def spawn(self, args: list[str], env: dict[str, str], log_path: Path,
              cwd: Path | None = None, timeout: float | None = None) -> ForkedWorker | None:
        """Fork a worker; None when the server cannot (the caller starts a subprocess)."""
        if not self.ready(timeout):
            return None
        status = log_path.with_name(log_path.name + ".exit")
        status.unlink(missing_ok=True)
        with self._reply:
            self._next += 1
            ident = self._next
            request = {"id": ident, "args": args, "env": env, "log": str(log_path),
                       "cwd": str(cwd) if cwd else None, "status": str(status)}
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.alive = False
                return None
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            while ident not in self._replies and self.alive:
                if not self._reply.wait(max(0.0, deadline - time.monotonic())):
                    break
            pid = self._replies.pop(ident, None)
            if pid is None:
                self.alive = False
                return None
            worker = ForkedWorker(pid, self, status)
            if pid in self._early:
                worker._exited(self._early.pop(pid))
            else:
                self._workers[pid] = worker
        return worker

    def close(self) -> None:
        """Stop the server (its workers are the executor's to kill)."""
        self.alive = False
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5.0)
        self._reader.join(timeout=5.0)  # it reads to EOF, then the pipe can be closed
        if self.proc.stdout is not None:
            self.proc.stdout.close()

