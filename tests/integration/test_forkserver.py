"""The forkserver: real server processes, real forks, real exit statuses and logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_disteval.executors.forkserver import ForkServer, env_difference, server_env
from pytest_disteval.executors.local import LocalExecutor, run_worker

WORKER = [sys.executable, "-m", "pytest_disteval.worker"]


def _server(tmp_path: Path, modules: tuple[str, ...] = ("json",)) -> ForkServer:
    return ForkServer(sys.executable, modules, dict(os.environ), tmp_path / "server.log")


def _spec(tmp_path: Path, **extra: object) -> Path:
    """A worker spec the worker refuses (unknown mode): it exits 3 with its error file."""
    spec = {"mode": "nonsense", "workdir": str(tmp_path), "error_path": str(tmp_path / "e.json"),
            "meta_path": str(tmp_path / "meta.json"), **extra}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_only_per_worker_variables_may_differ_from_the_servers() -> None:
    server = {"HF_HOME": "/a", "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}
    # a lease sets both CUDA variables; CUDA reads them when it initialises, in the child
    assert env_difference(server, {**server, "CUDA_VISIBLE_DEVICES": "1",
                                   "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                   "OMP_NUM_THREADS": "4", "DISTEVAL_FAULT": "hang",
                                   "PYTEST_CURRENT_TEST": "x"}) == []
    assert env_difference(server, {**server, "HF_HOME": "/b"}) == ["HF_HOME"]
    assert env_difference(server, {"PATH": "/bin"}) == ["HF_HOME"]  # removed counts too
    assert "CUDA_VISIBLE_DEVICES" not in server_env(server)


def test_a_forked_worker_reports_its_exit_status_and_writes_its_own_log(tmp_path: Path) -> None:
    server = _server(tmp_path, ("json", "pytest_disteval.worker"))
    try:
        log = tmp_path / "w.log"
        command = [*WORKER, str(_spec(tmp_path))]
        run = run_worker(command, env=dict(os.environ), log_path=log, timeout=60,
                         forkserver=server)
        assert run.forked
        assert run.returncode == 3  # EXIT_BAD_REQUEST: the worker's own status
        text = log.read_text()
        # the child appends after the executor's command line
        assert text.startswith(f"$ {' '.join(command)}\n[disteval] forked")
        assert "forked from the forkserver" in text
        assert "worker mode 'nonsense'" in text
        assert "nonsense" in json.loads((tmp_path / "e.json").read_text())["message"]
        assert not (tmp_path / "w.log.exit").exists()  # the status file is cleaned up
        assert server.info["ready"] and "pytest_disteval.worker" in server.info["preloaded"]
    finally:
        server.close()
    assert server.proc.returncode is not None


def _waiting_spec(tmp_path: Path, **extra: object) -> Path:
    """A scoring worker's spec: it waits for ``go.json`` (which tests write, or never)."""
    return _spec(tmp_path, mode="score", responses=str(tmp_path / "r.sqlite"),
                 wait_for=str(tmp_path / "go.json"), runs=[], include_paths=[], model_key="m",
                 model_args={}, all_local=True, **extra)


def _wait_for_line(log: Path, text: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.1)


def _stop(tmp_path: Path) -> None:
    # "go": false makes a waiting worker stop with its error (exit 3)
    (tmp_path / "go.json").write_text(json.dumps({"go": False, "why": "test"}))


def test_a_forked_worker_gets_its_own_environment_and_session(tmp_path: Path) -> None:
    server = _server(tmp_path, ("pytest_disteval.worker",))
    try:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "7"}
        worker = server.spawn([str(_waiting_spec(tmp_path))], env, tmp_path / "w.log")
        assert worker is not None
        _wait_for_line(tmp_path / "w.log", "waiting for the shards")
        # read back with C's getenv, as CUDA reads it when it initialises in the worker
        assert "imports done there; CUDA_VISIBLE_DEVICES=7\n" in (tmp_path / "w.log").read_text()
        assert os.getpgid(worker.pid) == worker.pid  # its own group: killed as one
        assert os.getsid(worker.pid) == worker.pid
        _stop(tmp_path)
        assert worker.wait(30) == 3
    finally:
        _stop(tmp_path)  # a failed assertion must not leave the worker waiting for ever
        server.close()


def test_a_worker_forked_to_hang_is_killed_at_its_timeout(tmp_path: Path) -> None:
    spec = _waiting_spec(tmp_path)  # no go file comes: it hangs
    server = _server(tmp_path, ("pytest_disteval.worker",))
    try:
        started = time.monotonic()
        run = run_worker([*WORKER, str(spec)], env=dict(os.environ),
                         log_path=tmp_path / "w.log", timeout=3, forkserver=server)
        assert run.forked and run.timed_out and run.returncode is None
        assert time.monotonic() - started < 20
    finally:
        server.close()


def test_a_server_whose_imports_fail_forks_nothing_and_the_worker_starts_plainly(
        tmp_path: Path) -> None:
    server = _server(tmp_path, ("json", "no_such_module_for_disteval"))
    try:
        assert not server.ready(60)
        assert "no_such_module_for_disteval" in server.info["error"]
        log = tmp_path / "w.log"
        run = run_worker([*WORKER, str(_spec(tmp_path))], env=dict(os.environ), log_path=log,
                         timeout=60, forkserver=server)
        assert not run.forked and run.returncode == 3
        assert "not forked (importing no_such_module_for_disteval failed" in log.read_text()
    finally:
        server.close()


def test_a_worker_outlives_a_dead_server_and_its_status_is_still_known(tmp_path: Path) -> None:
    server = _server(tmp_path, ("pytest_disteval.worker",))
    try:
        worker = server.spawn([str(_waiting_spec(tmp_path))], dict(os.environ),
                              tmp_path / "w.log")
        assert worker is not None
        _wait_for_line(tmp_path / "w.log", "waiting for the shards")
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server, not the worker's session
        server.proc.wait(10)
        _stop(tmp_path)
        assert worker.wait(30) == 3  # the status the worker wrote itself
        assert not server.alive
    finally:
        _stop(tmp_path)
        server.close()


def test_the_executor_forks_only_the_worker_module_and_keeps_one_server_per_imports(
        tmp_path: Path) -> None:
    executor = LocalExecutor("forkserver", tmp_path / "logs")
    env = dict(os.environ)
    try:
        hf = ("json", "pytest_disteval.worker")
        first = executor._server_for([*WORKER, "s.json"], env, hf)
        assert first is not None
        assert executor._server_for([*WORKER, "t.json"], env, ("json",)) is first  # a subset
        assert executor._server_for([sys.executable, "-m", "torch.distributed.run", "x"],
                                    env, hf) is None  # torchrun: a subprocess
        assert executor._server_for([*WORKER, "s.json"], env, None) is None  # not forkable
        other = executor._server_for([*WORKER, "s.json"], {**env, "HF_HOME": "/elsewhere"}, hf)
        assert other is not None and other is not first  # another environment: another
        assert executor._server_for([*WORKER, "s.json"], {**env, "HF_HOME": "/x"}, hf) is None
        assert (tmp_path / "logs" / "forkserver").is_dir()
    finally:
        executor.close()
    assert LocalExecutor("subprocess", tmp_path)._server_for([*WORKER, "s"], env, ("json",)) \
        is None


def test_a_waiting_scoring_worker_stops_when_its_session_is_gone(tmp_path: Path) -> None:
    # a session killed outright never writes the go file; its pid is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    spec = _waiting_spec(tmp_path, session_pid=gone.pid)
    run = run_worker([*WORKER, str(spec)], env=dict(os.environ), log_path=tmp_path / "w.log",
                     timeout=60)
    assert run.returncode == 3 and not run.timed_out
    assert f"the pytest session (pid {gone.pid})" in (tmp_path / "w.log").read_text()


FAKE_LIBCUDA = """
/* the one driver call the forkserver makes: like libcuda, it answers
   CUDA_ERROR_NOT_INITIALIZED (3) until cuInit has run */
int cuDeviceGetCount(int *count) {
    if (!INITIALISED) return 3;
    *count = 1;
    return 0;
}
"""

PROBE = """
import ctypes, json, os, sys
ctypes.CDLL(sys.argv[1], mode=os.RTLD_GLOBAL)  # mapped, as torch's CUDA build maps it
from pytest_disteval.executors import forkserver_main as forkserver
ready = forkserver._preload([])
print(json.dumps([forkserver._cuda_driver_loaded(), forkserver._cuda_driver_state(),
                  ready["ready"], ready["error"]]))
"""


@pytest.mark.parametrize("initialised", [0, 1])
def test_a_mapped_cuda_driver_blocks_forking_only_once_initialised(
        tmp_path: Path, initialised: int) -> None:
    # torch's CUDA build maps libcuda at import without calling cuInit (seen on the
    # H200: the old check refused every GPU machine and its workers waited on the
    # server's imports for nothing). A stand-in driver behind the same soname and call
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in libcuda")
    source = tmp_path / "fake.c"
    source.write_text(FAKE_LIBCUDA)
    lib = tmp_path / "libcuda.so.1"
    subprocess.run([cc, "-shared", "-fPIC", f"-DINITIALISED={initialised}",
                    "-Wl,-soname,libcuda.so.1", "-o", str(lib), str(source)], check=True)
    out = subprocess.run([sys.executable, "-c", PROBE, str(lib)], capture_output=True,
                         text=True, check=True).stdout
    loaded, state, ready, error = json.loads(out)
    assert loaded is True
    if initialised:
        assert state == "initialised" and ready is False
        assert "CUDA driver was loaded while importing (initialised)" in error
    else:
        assert state == "not initialised" and ready is True and error is None
