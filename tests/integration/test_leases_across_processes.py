"""Leases across processes: a child holding GPUs, processes racing, a killed owner's lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.gpu.lease import LeaseError, LeaseManager, LeaseTimeout

from conftest import ROOT


def test_acquire_any_takes_first_free_group(manager: LeaseManager, gpus: list[GPU]) -> None:
    groups = [gpus[:2], gpus[2:]]
    with manager.acquire(gpus[:1]):
        with manager.acquire_any(groups, timeout=1) as lease:
            assert lease.cuda_visible_devices == "2,3"
            # both groups held by this very thread: waiting would never end
            with pytest.raises(LeaseError, match="GPU 0 is held by this process"):
                manager.acquire_any(groups, timeout=None)
    other = LeaseManager(manager.lock_dir)
    with spawn("hold", str(manager.lock_dir), as_json(gpus[1:2])) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            with pytest.raises(LeaseTimeout, match=f"GPU 1 is held by pid {proc.pid}") as info:
                other.acquire_any([gpus[:2], gpus[1:3]], timeout=0.02)
            assert "no GPUs leased within 0.02 s" in str(info.value)
        finally:
            proc.kill()


CHILD = r"""
import json, sys, time
from pathlib import Path
from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.gpu.lease import LeaseManager

mode, lock_dir, spec = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
manager = LeaseManager(lock_dir, poll_interval=0.002)
gpus = [GPU(**d) for d in spec]
if mode == "hold":
    lease = manager.acquire(gpus, owner="victim")
    print("held", flush=True)
    time.sleep(60)
else:
    out, go, rounds = Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    held = []
    for _ in range(rounds):
        with manager.acquire(gpus, timeout=10, owner=mode):
            start = time.monotonic_ns()
            time.sleep(0.002)
            held.append([[g.uuid for g in gpus], start, time.monotonic_ns()])
    out.write_text(json.dumps(held))
"""


def spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True, env=env
    )


def as_json(gpus: list[GPU]) -> str:
    return json.dumps([g.__dict__ for g in gpus])


def test_processes_racing_never_share_a_gpu(tmp_path: Path, gpus: list[GPU]) -> None:
    go = tmp_path / "go"
    wants = {"a": gpus[0:2], "b": gpus[1:3], "c": gpus[0:3]}
    locks = str(tmp_path / "locks")
    procs = {
        name: spawn(name, locks, as_json(want), str(tmp_path / name), str(go), "12")
        for name, want in wants.items()
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        go.touch()
        for proc in procs.values():
            assert proc.wait(timeout=30) == 0
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    intervals: dict[str, list[tuple[int, int, str]]] = {}
    for name in wants:
        held = json.loads((tmp_path / name).read_text())
        assert len(held) == 12
        for uuids, start, end in held:
            for uuid in uuids:
                intervals.setdefault(uuid, []).append((start, end, name))
    assert len(intervals[gpus[1].uuid]) == 36  # every child holds GPU 1, one at a time
    for uuid, spans in intervals.items():
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            assert end < start, f"{uuid} held by {first} and {second} at once"


def test_lease_of_killed_owner_is_reclaimed(manager: LeaseManager, gpus: list[GPU]) -> None:
    with spawn("hold", str(manager.lock_dir), as_json(gpus[:2])) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            record = manager.holder(gpus[0])
            assert record is not None and record["pid"] == proc.pid and record["owner"] == "victim"
            assert manager.try_acquire([gpus[1]]) is None
            held_by = rf"GPU 0 is held by pid {proc.pid} on .* \(victim\) since"
            with pytest.raises(LeaseTimeout, match=held_by):
                manager.acquire(gpus[:1], timeout=0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert manager.holder(gpus[0]) is None  # the kernel dropped the dead owner's lock
    started = time.monotonic()
    with manager.acquire(gpus[:2], timeout=1) as lease:
        assert lease.cuda_visible_devices == "0,1"
        record = manager.holder(gpus[0])
        assert record is not None and record["pid"] == os.getpid()
    assert time.monotonic() - started < 0.5
