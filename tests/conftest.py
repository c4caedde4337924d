"""Fixtures shared by the tests: the bundled demo model and tasks, suite writing, fake GPUs.

Tests are laid out by what they need: tests/unit starts no process (the guard below
fails a test there that starts one: it belongs in tests/integration), tests/integration
runs workers, lm-eval, pytest subprocesses, Ray and the browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.gpu.lease import LeaseManager

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODELS = ROOT / "demo" / "models"
SUITES = ROOT / "suites"
UNIT = ROOT / "tests" / "unit"
GIB = 2**30


@dataclass(frozen=True)
class Demo:
    good: Path
    weak: Path


@pytest.fixture(scope="session")
def demo() -> Demo:
    return Demo(good=DEMO_MODELS / "tiny-arith", weak=DEMO_MODELS / "tiny-arith-untrained")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester dir holding copies of the demo tasks and data (tests may edit them)."""
    shutil.copytree(SUITES / "tasks", pytester.path / "suites" / "tasks")
    shutil.copytree(SUITES / "data", pytester.path / "suites" / "data")
    return pytester


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    # the suites that tests run in-process must not append to a real CI job's summary
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def gpus() -> list[GPU]:
    """Four fake 80 GiB GPUs for lease tests."""
    # UUIDs unique per test, because the in-process lease registry is keyed by UUID
    tag = uuidlib.uuid4().hex[:12]
    return [GPU(i, f"GPU-{tag}-{i}", "Fake", 80 * GIB, 80 * GIB) for i in range(4)]


@pytest.fixture
def manager(tmp_path: Path) -> LeaseManager:
    """A lease manager on a lock dir of the test's own (that does not exist yet)."""
    return LeaseManager(tmp_path / "locks" / "nested", poll_interval=0.005)


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("tests/unit starts no process: move this test to tests/integration")


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Popen is under subprocess.run and pytester's runpytest_subprocess; fork under
    # multiprocessing and the forkserver. Here, not in a tests/unit/conftest.py: a second
    # module named conftest would shadow this one for `from conftest import ...`
    if request.node.path.is_relative_to(UNIT):
        monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
        monkeypatch.setattr(os, "fork", _refuse)
        monkeypatch.setattr(os, "posix_spawn", _refuse)
