"""Out of memory: the worker retries at half the batch size, or stops with what to change.

A CPU cannot run out of GPU memory, so ``DISTEVAL_FAULT=oom:N`` makes the real
HF model's calls of more than N rows raise torch's OutOfMemoryError; the retry
itself is the real one (lm-eval's HFLM batching). tests/integration/test_gpu.py runs a real
CUDA OOM.
"""

from __future__ import annotations

import json

import pytest

from conftest import Demo
from helpers import model_block, write_suite

pytestmark = pytest.mark.slow

MC = """\
tasks:
  - task: arith_mc
    limit: 40
    thresholds: {acc: 0.9}
"""


def test_an_oom_is_retried_at_half_the_batch_until_it_fits(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    write_suite(project, "oom", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + MC)
    monkeypatch.setenv("DISTEVAL_FAULT", "oom:16")
    project.runpytest("suites").assert_outcomes(passed=1)
    base = project.path / ".disteval"
    (meta,) = (base / "runs").glob("*/meta.json")
    assert json.loads(meta.read_text())["timing"]["oom_retries"] == [
        {"from": 64, "to": 32}, {"from": 32, "to": 16}]
    (log,) = (base / "logs").glob("*.log")
    assert "out of memory at batch size 64; retrying at 32" in log.read_text()


def test_an_oom_at_batch_size_1_fails_with_what_to_change(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    write_suite(project, "oom", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good, extra="batch_size: 4\n").replace(
                    "    batch_size: 64\n", "") + MC)
    monkeypatch.setenv("DISTEVAL_FAULT", "oom:always")
    result = project.runpytest("suites")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "arith_mc acc: no result, the evaluation of model 'good' failed",
        "*out of GPU memory at batch size 1: one request does not fit beside the model; use a "
        "larger tp*retried at batch size 2, 1*",
    ])
