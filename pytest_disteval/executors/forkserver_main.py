"""The forkserver process: imports once, then forks each worker from that state.

``python -m pytest_disteval.executors.forkserver_main MODULE...``, started by
``ForkServer`` (executors/forkserver.py, which says why and when). It imports
the modules, checks that forking is still safe (no CUDA initialised, no other
thread), says so on its protocol pipe, then forks one child per request; a child
becomes the worker. Runs in its own process: nothing here is imported by the
pytest process.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any


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


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
