"""The NVML sampler, against a fake NVML (the real one: tests/integration/test_gpu.py)."""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_disteval.gpu.monitor import GpuSampler, cuda_visible_sampler
from pytest_disteval.jobs import record as jobrecord

from fakenvml import FakeNvml as NodeNvml


class FakeNvml:
    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.calls = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        self.calls += 1
        return SimpleNamespace(gpu=50 + 10 * handle)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=(handle + 1) * 2**30 + self.calls)


def test_samples_each_gpu_into_a_timeline_the_job_record_reads(tmp_path: Path) -> None:
    with GpuSampler([0, 1], period=0.01, nvml=FakeNvml()) as sampler:
        time.sleep(0.1)
    timeline = sampler.timeline()
    assert len(timeline["t"]) >= 3 and timeline["unavailable"] is None
    assert set(timeline["gpus"]) == {"0", "1"}
    assert len(timeline["gpus"]["1"]["util_pct"]) == len(timeline["t"])
    # the figures come from the timeline file, as the scheduler writes it
    path = tmp_path / "gpu-w.json"
    path.write_text(json.dumps(timeline))
    gpu, why = jobrecord.gpu_section([path])
    assert gpu is not None and why is None
    assert gpu["per_device"]["0"]["mean_util_pct"] == 50.0
    assert gpu["per_device"]["1"]["mean_util_pct"] == 60.0
    assert gpu["mean_util_pct"] == 55.0
    assert gpu["per_device"]["1"]["peak_mem_bytes"] > 2 * 2**30


def test_without_nvml_it_says_why_once_and_records_nothing(tmp_path: Path) -> None:
    with GpuSampler([0], nvml=FakeNvml(fail_init=True)) as sampler:
        pass
    assert sampler.times == [] and sampler.timeline()["gpus"] == {
        "0": {"util_pct": [], "mem_used_bytes": []}}
    assert sampler.unavailable == ("NVML unavailable (RuntimeError: NVML Shared Library "
                                   "Not Found)")
    # the reason is what the record (so every NVML budget) gives for having no figures
    path = tmp_path / "gpu-w.json"
    path.write_text(json.dumps(sampler.timeline()))
    assert jobrecord.gpu_section([path]) == (None, sampler.unavailable)


# -- a worker whose GPUs were chosen elsewhere (a Ray actor): CUDA_VISIBLE_DEVICES -> NVML

def _sampled(sampler: GpuSampler) -> GpuSampler:
    with sampler:
        deadline = time.monotonic() + 5
        while len(sampler.times) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
    return sampler


@pytest.mark.parametrize(("visible", "order", "indices"), [
    ("2,3", None, [2, 3]),  # one GPU model: CUDA's default order is NVML's
    ("3", "PCI_BUS_ID", [3]),
    (" 1 ", "FASTEST_FIRST", [1]),
    ("GPU-222fake,0", None, [2, 0]),  # a UUID prefix, as CUDA accepts
])
def test_cuda_visible_devices_are_sampled_by_their_nvml_indices(
        visible: str, order: str | None, indices: list[int]) -> None:
    nvml = NodeNvml({i: [10 * (i + 1)] for i in range(4)})
    sampler = _sampled(cuda_visible_sampler(visible, order, nvml=nvml, period=0.005))
    assert sampler.unavailable is None and sampler.indices == indices
    timeline = sampler.timeline()
    assert list(timeline["gpus"]) == [str(i) for i in indices]
    for i in indices:  # each key holds that GPU's own samples
        assert set(timeline["gpus"][str(i)]["util_pct"]) == {10 * (i + 1)}
    assert all(nvml.samples[i] == 0 for i in range(4) if i not in indices)  # not read


def test_a_mixed_node_needs_pci_bus_order_to_map_ordinals() -> None:
    nvml = NodeNvml({0: [50], 1: [50]}, names={1: "NVIDIA L40S"})
    sampler = cuda_visible_sampler("1", None, nvml=nvml)
    assert sampler.unavailable == (
        "GPUs not sampled: this node's GPUs are of different models (NVIDIA H200, NVIDIA "
        "L40S) and CUDA_DEVICE_ORDER is unset (FASTEST_FIRST), so the device numbers in "
        "CUDA_VISIBLE_DEVICES='1' need not be NVML's; set CUDA_DEVICE_ORDER=PCI_BUS_ID in "
        "the environment of `ray start` there")
    sampler.start()  # a reason known beforehand: nothing starts, nothing is sampled
    assert sampler.times == [] and nvml.samples == {0: 0, 1: 0}
    # in PCI bus order the ordinal is the NVML index; a UUID needs no order at all
    assert cuda_visible_sampler("1", "PCI_BUS_ID", nvml=nvml).indices == [1]
    uuid = nvml.nvmlDeviceGetUUID(1)
    assert cuda_visible_sampler(uuid, None, nvml=nvml).unavailable is None


@pytest.mark.parametrize(("visible", "why"), [
    ("7", "GPUs not sampled: CUDA_VISIBLE_DEVICES='7': '7' matches no GPU; this machine "
          "has 0 (GPU-000fake-*), 1 (GPU-111fake-*)"),
    ("MIG-abc", "GPUs not sampled: CUDA_VISIBLE_DEVICES='MIG-abc': MIG device 'MIG-abc' is "
                "not supported; name whole GPUs"),
    ("", "GPUs not sampled: CUDA_VISIBLE_DEVICES='' names no GPU"),
])
def test_what_cannot_be_mapped_is_not_sampled_and_says_why(visible: str, why: str) -> None:
    sampler = cuda_visible_sampler(visible, None, nvml=NodeNvml({0: [1], 1: [1]}))
    assert sampler.unavailable is not None and fnmatch.fnmatch(sampler.unavailable, why)


def test_without_nvml_on_the_node_the_reason_is_the_samplers_own() -> None:
    broken = FakeNvml(fail_init=True)
    mapped = cuda_visible_sampler("0", None, nvml=broken)
    with GpuSampler([0], nvml=FakeNvml(fail_init=True)) as local:
        pass
    # the same words as beside a local worker, so budgets skip alike on either executor
    assert mapped.unavailable == local.unavailable == (
        "NVML unavailable (RuntimeError: NVML Shared Library Not Found)")
    assert mapped.timeline()["gpus"] == {"0": {"util_pct": [], "mem_used_bytes": []}}
