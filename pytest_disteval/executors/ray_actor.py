"""The side of the Ray executor that runs inside an actor, on whatever node Ray picked.

A ``GroupActor`` holds one group's GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` for it)
and runs the ordinary worker (``python -m pytest_disteval.worker SPEC``) as a
subprocess in its own process group: the same timeout and kill semantics as the
local executor, torchrun for backends that need it, and a model that never
lives in the actor process itself. The worker writes responses to a response
store on the actor's node, seeded with what the driver already holds; the actor
streams every new row (and the log) back to the driver, which writes them into
the session's store. So a node needs no shared file system, and an actor lost
mid-shard loses at most what it had not streamed yet. While the worker runs, the
actor samples its GPUs with NVML (monitor.py), since only a process on that node
can; the timeline goes back with the result.

Imports only the standard library at module level (monitor.py imports no more;
pynvml is imported when a sampler starts): the driver imports this module to
define the actor class, and must not pay for lm-eval.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_disteval.gpu.monitor import cuda_visible_sampler
from pytest_disteval.store.responses import RESPONSES_DDL
from pytest_disteval.worker.spec import WorkerSpec

# rows are copied as the response store (store/responses.py) holds them
Row = tuple[str, str, str]  # kind, request hash, response (JSON text)

TERM_GRACE_S = 5.0
LOG_CHUNK_MAX = 256 * 1024  # bytes of log per message: a chatty worker never floods Ray


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=120.0, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(RESPONSES_DDL)
    return db


def read_rows(path: Path, model_key: str, after: int = 0) -> tuple[list[Row], int]:
    """Rows of ``model_key`` with a rowid above ``after``, and the highest rowid seen."""
    if not path.exists():
        return [], after
    db = _connect(path)
    try:
        found = db.execute("SELECT rowid, kind, request_hash, response FROM responses "
                           "WHERE model_key = ? AND rowid > ? ORDER BY rowid",
                           (model_key, after)).fetchall()
    finally:
        db.close()
    last = found[-1][0] if found else after
    return [(kind, key, text) for _, kind, key, text in found], last


def write_rows(path: Path, model_key: str, rows: Sequence[Row]) -> int:
    """Insert rows (the first answer of a key wins, as in ResponseStore); rows added."""
    if not rows:
        return 0
    db = _connect(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO responses (model_key, kind, request_hash, "
                       "response) VALUES (?, ?, ?, ?)",
                       [(model_key, kind, key, text) for kind, key, text in rows])
        added = db.total_changes - before
        db.execute("COMMIT")
    finally:
        db.close()
    return added


def _die_with_parent() -> None:
    # the actor may be killed outright (ray.kill, a lost node): its worker must not
    # run on, holding the GPUs Ray now hands to someone else. Linux: PR_SET_PDEATHSIG
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


class GroupActor:
    """One group's worker, wrapped as a Ray actor by executors/ray.py."""

    def __init__(self, nvml: Any = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="disteval-actor-"))
        self.nvml = nvml  # the sampler's NVML module: pynvml unless one is given (tests)

    def where(self) -> dict[str, Any]:
        """Where Ray placed this actor: node, GPU ids, the CUDA_VISIBLE_DEVICES it set."""
        import ray

        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "node_id": context.get_node_id(),
                "node_ip": ray.util.get_node_ip_address(),
                "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "dir": str(self.dir)}

    def run(self, command: list[str], spec: WorkerSpec, env: dict[str, str],
            timeout: float | None, seed: list[Row], poll_s: float = 0.5,
            sample_gpus: bool = False) -> Iterator[dict[str, Any]]:
        """Run one worker; yield ``{"rows", "log"}`` as it goes, then ``{"done": ...}``.

        ``sample_gpus``: the actor holds GPUs; the done message then carries their NVML
        timeline (``gpu``), or the reason there is none in its ``unavailable``.
        """
        model_key = spec.model_key
        run_dir = self.dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("*.json"):
            stale.unlink()
        last = 0
        store: Path | None = None
        if spec.responses is not None:
            store = self.dir / "responses.sqlite"
            write_rows(store, model_key, seed)  # what the driver holds is not redone
            _, last = read_rows(store, model_key)
        # the same file names as the driver's run dir: it writes them back there
        local = dataclasses.replace(spec, responses=store, run_dir=run_dir,
                                    error_path=run_dir / spec.error_path.name,
                                    meta_path=run_dir / spec.meta_path.name)
        spec_path = self.dir / "spec.json"
        spec_path.write_text(local.to_json(), encoding="utf-8")
        # the cluster's interpreter, not the driver's path (another node may lack it)
        argv = [sys.executable, *command[1:-1], str(spec_path)]
        import pytest_disteval

        # the copy Ray shipped with the job (runtime_env py_modules), as the actor uses
        root = str(Path(pytest_disteval.__file__).resolve().parent.parent)
        child_env = {**os.environ, **env}
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        log_path = self.dir / "worker.log"
        sampler = None
        visible = order = None
        if sample_gpus:
            # what the worker will see: Ray's CUDA_VISIBLE_DEVICES (the driver's is never
            # sent, executors/ray.py), and this node's CUDA_DEVICE_ORDER
            visible = child_env.get("CUDA_VISIBLE_DEVICES")
            if visible is None:  # Ray told not to set it, none on the node: Ray's ids
                import ray

                visible = ",".join(str(i) for i in ray.get_gpu_ids())
            order = child_env.get("CUDA_DEVICE_ORDER")
        started = time.perf_counter()
        sent = 0
        with log_path.open("wb") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    env=child_env, start_new_session=True,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            if visible is not None:  # beside the worker, as the scheduler's local sampler
                sampler = cuda_visible_sampler(visible, order, nvml=self.nvml).start()
            timed_out = False
            try:
                while True:
                    returncode = proc.poll()
                    rows: list[Row] = []
                    if store is not None:
                        rows, last = read_rows(store, model_key, last)
                    text, sent = self._log_since(log_path, sent)
                    if rows or text:
                        yield {"rows": rows, "log": text}
                    if returncode is not None:
                        break
                    if timeout is not None and time.perf_counter() - started > timeout:
                        _kill_group(proc)
                        timed_out = True
                        break
                    time.sleep(poll_s)
            finally:
                if proc.poll() is None:
                    _kill_group(proc)
                if sampler is not None:
                    sampler.stop()
        text, sent = self._log_since(log_path, sent, limit=None)
        files = {p.name: p.read_text(encoding="utf-8") for p in run_dir.glob("*.json")}
        gpu = None
        if sampler is not None:
            # keyed by this node's NVML indices; the driver renumbers them cluster-wide
            gpu = {**sampler.timeline(), "cuda_visible_devices": visible,
                   "cuda_device_order": order}
        yield {"done": True, "returncode": None if timed_out else proc.returncode,
               "timed_out": timed_out, "wall_s": time.perf_counter() - started,
               "log": text, "files": files, "argv": argv, "gpu": gpu}

    @staticmethod
    def _log_since(path: Path, offset: int, limit: int | None = LOG_CHUNK_MAX) -> tuple[str, int]:
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(limit if limit is not None else -1)
        except OSError:
            return "", offset
        return data.decode("utf-8", errors="replace"), offset + len(data)
