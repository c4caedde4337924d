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
