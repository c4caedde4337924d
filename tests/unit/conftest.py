"""tests/unit: fast tests that start no process (a newcomer's sub-minute loop).

A test here that starts a process (a worker, a pytest subprocess, a child that holds a
lease) fails at once with the reason: it belongs in tests/integration.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, NoReturn

import pytest


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("tests/unit starts no process: move this test to tests/integration")


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Popen is under subprocess.run/check_output and pytester's runpytest_subprocess;
    # fork is under multiprocessing and the forkserver
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    monkeypatch.setattr(os, "fork", _refuse)
    monkeypatch.setattr(os, "posix_spawn", _refuse)
