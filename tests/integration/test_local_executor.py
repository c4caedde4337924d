"""The local executor: a worker's process group does not outlive the worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pytest_disteval.executors.local import _group_alive, run_worker

# a "worker" that starts a child in its own process group (as vLLM starts its engine
# core), writes the child's pid and exits without waiting for it
SPAWNS_A_CHILD = """
import subprocess, sys
child = subprocess.Popen(["sleep", "300"])
open(sys.argv[1], "w").write(str(child.pid))
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_child_left_by_an_exited_worker_is_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    run = run_worker([sys.executable, "-c", SPAWNS_A_CHILD, str(pid_file)],
                     env=dict(os.environ), log_path=tmp_path / "w.log", timeout=60)
    assert run.returncode == 0 and not run.timed_out
    child = int(pid_file.read_text())
    assert not _running(child)


def test_group_alive_sees_a_running_group_and_not_an_empty_one() -> None:
    assert _group_alive(os.getpgrp())  # this test's own group
    assert not _group_alive(2**22 + 12345)  # no such group
