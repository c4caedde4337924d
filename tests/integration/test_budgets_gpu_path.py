"""The GPU budgets and the imbalance warning through the items, on a CPU machine.

The job really runs (the demo model on the CPU); only its GPU section is replaced by
figures from NVML timelines sampled by the real GpuSampler over a fake NVML with the
interface of pynvml. The real NVML path is tests/integration/test_gpu.py.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.gpu.monitor import GpuSampler
from pytest_disteval.jobs import record as jobrecord

from conftest import Demo
from fakenvml import FakeNvml
from helpers import model_block, write_suite

pytestmark = pytest.mark.slow


def _timeline(path: Path) -> Path:
    # GPU 0 always busy, GPU 1 busy half the time: one group, imbalanced
    with GpuSampler([0, 1], period=0.005, nvml=FakeNvml({0: [100], 1: [100, 0]})) as sampler:
        deadline = time.monotonic() + 5
        while len(sampler.times) < 8 and time.monotonic() < deadline:
            time.sleep(0.005)
    path.write_text(json.dumps(sampler.timeline()))
    return path


def test_gpu_budgets_and_the_imbalance_warning_through_the_items(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = _timeline(project.path / "gpu-fake.json")
    build = jobrecord.build

    def with_gpu(**kwargs: Any) -> dict[str, Any]:
        record = build(**kwargs)
        record["gpu"], record["gpu_unavailable"] = jobrecord.gpu_section([timeline])
        return record

    monkeypatch.setattr(jobrecord, "build", with_gpu)
    write_suite(project, "g", "disteval: 1\ninclude: [tasks]\nmodels:\n" + model_block(
        "good", demo.good, extra="""\
            budgets:
              gpu_memory: 8GiB
              group_gpu_memory: 16GiB
              gpu_util: 50%
            """) + """\
tasks:
  - task: arith_mc
    limit: 10
    thresholds: {acc: 0.5}
""")
    base = project.path / ".disteval"
    result = project.runpytest("suites", f"--disteval-dir={base}", "-W",
                               "default::pytest_disteval.DistevalImbalanceWarning")
    # GPU 0 peaks at 10 GiB: over 8 GiB; the group's 14 GiB fit in 16 GiB; mean 75% >= 50%
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "gpu_memory = 10 GiB, required <= 8 GiB, over by 2 GiB",
        "peak memory per GPU: GPU 0 10 GiB, GPU 1 4 GiB",
    ])
    # said once per job, as a warning users can filter, not as a failure
    result.stdout.fnmatch_lines([
        "*DistevalImbalanceWarning: GPUs of one group of model 'good' were unevenly used: "
        "group [[]0, 1[]]: GPU 0 at 100% mean utilisation, GPU 1 at *%"])
    assert result.stdout.str().count("DistevalImbalanceWarning:") == 1
    # where warnings are errors, the filter keeps the run green; the record answers
    # from the store this time
    strict = project.runpytest("suites", f"--disteval-dir={base}", "-W", "error",
                               "-W", "ignore::pytest_disteval.DistevalImbalanceWarning")
    strict.assert_outcomes(passed=3, failed=1)
    # unfiltered, filterwarnings=error turns it into the failure of the job's first item
    unfiltered = project.runpytest("suites", f"--disteval-dir={base}", "-W", "error")
    unfiltered.assert_outcomes(passed=2, failed=2)
    unfiltered.stdout.fnmatch_lines(["*DistevalImbalanceWarning: GPUs of one group*"])
    record = json.loads((base / "results" / "suites" / "g" / "good.json").read_text())
    assert record["config"]["disteval"]["job"]["gpu"]["imbalance"].startswith("group [0, 1]")


def _known_timeline(path: Path, util: list[int], mem_gib: list[float]) -> None:
    """A timeline file as the scheduler writes it (GpuSampler.timeline()), GPU 0 only."""
    path.write_text(json.dumps({
        "period_s": 0.5, "t": [0.5 * i for i in range(len(util))], "unavailable": None,
        "gpus": {"0": {"util_pct": util, "mem_used_bytes": [int(m * 2**30) for m in mem_gib]}},
    }))


def _properties(xml: Path) -> dict[str, dict[str, str]]:
    return {case.get("name", ""): {p.get("name", ""): p.get("value", "")
                                   for p in case.iter("property")}
            for case in ET.parse(xml).iter("testcase")}


def test_the_items_gpu_properties_are_the_job_records_figures_also_from_the_store(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    build = jobrecord.build

    def with_timelines(**kwargs: Any) -> dict[str, Any]:
        # two replicas' timelines of GPU 0 in the job's run directory, where the
        # sampler writes them: 4 samples at 90%, then 2 at 30%; peaks 3 and 5 GiB
        _known_timeline(kwargs["run_dir"] / "gpu-a.json", [90, 90, 90, 90], [1, 2, 3, 3])
        _known_timeline(kwargs["run_dir"] / "gpu-b.json", [30, 30], [5, 4])
        return build(**kwargs)

    monkeypatch.setattr(jobrecord, "build", with_timelines)
    write_suite(project, "g", "disteval: 1\ninclude: [tasks]\nmodels:\n" + model_block(
        "good", demo.good, extra="budgets: {gpu_util: 50%, gpu_memory: 8GiB}\n") + """\
tasks:
  - task: arith_mc
    limit: 10
    thresholds: {acc: 0.5}
""")
    base = project.path / ".disteval"
    project.runpytest("suites", f"--disteval-dir={base}", "--junitxml=fresh.xml",
                      ).assert_outcomes(passed=3)
    results = base / "results" / "suites" / "g" / "good.json"
    record = json.loads(results.read_text())["config"]["disteval"]["job"]
    # the record pools the samples: (4 x 90 + 2 x 30) / 6 = 70; a mean of the two
    # replicas' means (the summary the items used to get) would say 60
    assert record["gpu"]["mean_util_pct"] == 70.0
    assert record["gpu"]["per_device"]["0"]["peak_mem_bytes"] == 5 * 2**30
    fresh = _properties(project.path / "fresh.xml")
    assert fresh["acc"]["gpu_mean_util_pct"] == "70.0"
    assert fresh["acc"]["gpu_peak_mem_gib"] == "5.0"
    # the budgets judge the same figures
    assert float(fresh["gpu_util"]["measured"]) == float(fresh["gpu_util"]["gpu_mean_util_pct"])
    assert float(fresh["gpu_memory"]["measured"]) == 5.0

    # warm: nothing runs, nothing builds a record; the stored one answers
    monkeypatch.setattr(jobrecord, "build", build)  # not undo(): pytester's chdir is in it
    project.runpytest("suites", f"--disteval-dir={base}", "--junitxml=warm.xml",
                      ).assert_outcomes(passed=3)
    assert json.loads(results.read_text())["config"]["disteval"]["job"]["cached"] is True
    warm = _properties(project.path / "warm.xml")
    for name in ("acc", "gpu_util", "gpu_memory"):
        assert warm[name]["gpu_mean_util_pct"] == "70.0"
        assert warm[name]["gpu_peak_mem_gib"] == "5.0"
