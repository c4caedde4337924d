"""Workers forked from a process that has already imported torch, transformers and lm-eval.

Why: on the H200 a worker spent 10-15 s importing before its model was on the GPU
(``benchmarks/profile_load.py``: torch 3-4 s, transformers' model classes 7 s,
among them sklearn and torch.distributed.tensor; building the 1.1B model itself
took 0.8 s). Every worker paid that again: each job, each dp shard, each packed
replica. The forkserver pays it once per session, started as soon as a job needs
a worker (its imports overlap the preflight and the other workers' start), and
forks each worker from that state, as ``multiprocessing``'s forkserver does.

Server (``python -m pytest_disteval.executors.forkserver MODULE...``): imports the
modules, says whether it is ready on its protocol pipe (one JSON object a line),
then forks one child per request. A child starts a session of its own (the
executor kills workers by process group), points stdout and stderr at the
worker's log, takes the worker's environment and runs ``pytest_disteval.worker``.
The server reaps its children and reports each exit status.

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

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

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


# -- the server --------------------------------------------------------------------


def _send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _preload(modules: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    # torch.cuda.is_available() (transformers calls it while importing) would otherwise
    # initialise the CUDA driver here, and a forked child could not use CUDA at all
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    loaded: list[str] = []
    error = None
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 (any failure: the workers start plainly)
            error = f"importing {name} failed: {type(exc).__name__}: {exc}"
            break
        loaded.append(name)
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    torch = sys.modules.get("torch")
    if error is None and torch is not None and torch.cuda.is_initialized():
        error = "CUDA was initialised while importing: a forked worker could not use it"
    if error is None and _cuda_driver_loaded():
        # torch's CUDA build maps libcuda as it is imported (seen on the H200), and so
        # may another library. Mapped is harmless; initialised (cuInit called, by
        # anyone) is what a child cannot undo
        state = _cuda_driver_state()
        if state != "not initialised":
            error = f"the CUDA driver was loaded while importing ({state}): forking is unsafe"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if error is None and others:
        error = f"threads running after the imports ({', '.join(others)}): forking is unsafe"
    return {"ready": error is None, "error": error, "preloaded": loaded,
            "seconds": round(time.perf_counter() - started, 3), "pid": os.getpid()}


def _cuda_driver_loaded() -> bool:
    """Whether libcuda is mapped into this process (by any name: _cuda_driver_state asks it)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "libcuda.so" in maps


CUDA_ERROR_NOT_INITIALIZED = 3


def _cuda_driver_state() -> str:
    """Whether the loaded libcuda has been initialised, asked without initialising it.

    Every driver call but cuInit answers CUDA_ERROR_NOT_INITIALIZED until cuInit ran;
    RTLD_NOLOAD binds the copy already mapped instead of loading one.
    """
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
            break
        except OSError:
            continue
    else:
        return "state unknown"
    count = ctypes.c_int(0)
    code = lib.cuDeviceGetCount(ctypes.byref(count))
    if code == CUDA_ERROR_NOT_INITIALIZED:
        return "not initialised"
    return "initialised" if code == 0 else f"cuDeviceGetCount returned {code}"


def _c_getenv(name: str) -> str | None:
    import ctypes

    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    value = getenv(name.encode())
    return None if value is None else value.decode(errors="replace")


def _child(request: dict[str, Any], channel: IO[str]) -> None:
    """In the forked child: become the worker. Never returns."""
    code = 1
    try:
        channel.close()  # the protocol is the server's
        os.setsid()  # its own process group: the executor kills workers by group
        try:  # ps and top show the server's command line; the name at least says which
            Path("/proc/self/comm").write_text("disteval-worker")
        except OSError:
            pass
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        env = request["env"]
        os.environ.clear()
        os.environ.update(env)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        torch = sys.modules.get("torch")
        threads = env.get("OMP_NUM_THREADS", "")
        if torch is not None and threads.isdigit() and int(threads) > 0:
            # torch read OMP_NUM_THREADS when the server imported it
            torch.set_num_threads(int(threads))
        from pytest_disteval.worker import main as worker

        sys.argv = [worker.__file__, *request["args"]]
        # as CUDA will read it (getenv in C, not os.environ): the group this worker sees
        visible = _c_getenv("CUDA_VISIBLE_DEVICES")
        print(f"[disteval] forked from the forkserver (pid {os.getppid()}): imports done "
              f"there{'' if visible is None else f'; CUDA_VISIBLE_DEVICES={visible}'}",
              flush=True)
        code = worker.main(list(request["args"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 (the log says what; the exit status says it failed)
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            # the status, also for a session whose server died before it could report
            Path(request["status"]).write_text(str(code))
        finally:
            os._exit(code)


def serve(modules: list[str]) -> int:
    # the protocol gets its own descriptor; fd 1 goes where stderr goes, so that
    # whatever an imported module prints cannot corrupt it
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    ready = _preload(modules)
    _send(channel, ready)
    if not ready["ready"]:
        return 1
    inbox = sys.stdin.buffer.fileno()
    pending = b""
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([inbox], [], [], 0.05)
        if readable:
            chunk = os.read(inbox, 1 << 16)
            if not chunk:
                break  # the session closed the pipe (or died): no more workers
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, channel)
                children.add(pid)
                _send(channel, {"id": request["id"], "pid": pid})
        for pid in list(children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                children.discard(pid)
                continue
            if done:
                children.discard(pid)
                _send(channel, {"exit": pid, "returncode": os.waitstatus_to_exitcode(status)})
    # workers still running go on in their own sessions; the executor kills those
    return 0


# -- the client --------------------------------------------------------------------


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
                [python, "-m", "pytest_disteval.executors.forkserver", *modules],
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


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
