"""Fixtures shared by the tests: the bundled demo model and tasks, suite writing."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODELS = ROOT / "demo" / "models"
SUITES = ROOT / "suites"


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
