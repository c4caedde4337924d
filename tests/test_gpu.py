"""What only a GPU can show: real NVML inventory and leases, the hf backend on CUDA.

Marked ``gpu``; skipped where NVML finds no GPU (CI has none).
"""

from __future__ import annotations

import json
import os

import pytest

from pytest_disteval.gpus import LeaseManager, NoGPUError, NvmlInventory

from conftest import Demo
from helpers import write_suite


def _inventory() -> NvmlInventory | None:
    try:
        inv = NvmlInventory()
    except (NoGPUError, ImportError):
        return None
    return inv if inv.gpus() else None


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_inventory() is None, reason="no GPU visible to NVML")]


def test_nvml_inventory_and_a_real_lease(tmp_path_factory: pytest.TempPathFactory) -> None:
    inv = _inventory()
    assert inv is not None
    gpu = inv.gpus()[0]
    assert gpu.uuid.startswith("GPU-") and gpu.total_memory > 10 * 2**30
    leases = LeaseManager(tmp_path_factory.mktemp("locks"))
    with leases.acquire([gpu], owner="test") as lease:
        holder = leases.holder(gpu)
        assert holder is not None and holder["pid"] == os.getpid()
        assert lease.env({})["CUDA_VISIBLE_DEVICES"] == str(gpu.index)
        assert leases.try_acquire([gpu]) is None  # not twice, even in one process
    assert leases.holder(gpu) is None


def test_the_hf_backend_runs_on_a_gpu(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "gpu", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: good
            backend: hf
            model_args: {{pretrained: {demo.good}, dtype: float32}}
            batch_size: 64
        tasks:
          - task: arith_mc
            thresholds: {{acc: 0.9}}
        """)
    base = project.path / ".disteval"
    project.runpytest("suites", "--gpus", "1", "--junitxml=r.xml").assert_outcomes(passed=1)
    # the NVML sampler ran beside the worker: a timeline and the item's properties
    (timeline,) = (base / "runs").glob("*/gpu-*.json")
    assert json.loads(timeline.read_text())["t"]
    xml = (project.path / "r.xml").read_text()
    assert 'name="gpu_mean_util_pct"' in xml and 'name="gpu_peak_mem_gib"' in xml
    spec = json.loads(next((base / "runs").glob("*/spec.json")).read_text())
    assert spec["device"] == "cuda"
    (start,) = [r for r in map(json.loads, (base / "workers.jsonl").read_text().splitlines())
                if r["event"] == "start"]
    assert start["gpus"] == [_inventory().gpus()[0].index]  # type: ignore[union-attr]


def test_nvml_budgets_on_a_real_gpu(project: pytest.Pytester, demo: Demo) -> None:
    """gpu_memory, group_gpu_memory and gpu_util judged on the NVML sampler's timeline."""
    write_suite(project, "gpu-budgets", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: good
            backend: hf
            model_args: {{pretrained: {demo.good}, dtype: float32}}
            batch_size: 64
            budgets:
              gpu_memory: 100GiB
              group_gpu_memory: 1MiB
              gpu_util: 100%
              tokens_per_s: 1/s
        tasks:
          - task: arith_mc
            thresholds: {{acc: 0.9}}
        """)
    result = project.runpytest("suites", "--gpus", "1", "--junitxml=r.xml", "-rs")
    # 1MiB cannot hold a CUDA context, and the GPU idles while the model loads
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["group_gpu_memory = * GiB, required <= 1 MiB, over by *"])
    result.stdout.fnmatch_lines(["gpu_util = *%, required >= 100.0%, short by *%",
                                 "mean utilisation per GPU: GPU *"])
    base = project.path / ".disteval"
    record = json.loads((base / "results" / "suites" / "gpu-budgets" / "good.json")
                        .read_text())["config"]["disteval"]["job"]
    gpu = _inventory().gpus()[0]  # type: ignore[union-attr]
    assert record["device"] == "cuda" and record["groups"] == [[gpu.index]]
    assert record["gpus"][0]["uuid"] == gpu.uuid
    assert record["gpus"][0]["memory_total_bytes"] == gpu.total_memory
    figures = record["gpu"]["per_device"][str(gpu.index)]
    assert 2**20 < figures["peak_mem_bytes"] <= gpu.total_memory
    assert record["gpu"]["group_peak_mem_bytes"] == figures["peak_mem_bytes"]  # one GPU
    assert 0 <= figures["mean_util_pct"] <= 100 and record["gpu"]["imbalance"] is None
    (timeline,) = record["gpu"]["timelines"]
    assert json.loads(open(timeline).read())["t"]
    assert record["tokens"] > record["requests"] > 0
