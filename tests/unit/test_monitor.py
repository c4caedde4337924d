"""The NVML sampler, against a fake NVML module (the real one runs in tests/test_gpu.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from pytest_disteval.monitor import GpuSampler


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


def test_samples_each_gpu_and_summarises() -> None:
    with GpuSampler([0, 1], period=0.01, nvml=FakeNvml()) as sampler:
        time.sleep(0.1)
    timeline = sampler.timeline()
    assert len(timeline["t"]) >= 3 and timeline["unavailable"] is None
    assert set(timeline["gpus"]) == {"0", "1"}
    assert len(timeline["gpus"]["1"]["util_pct"]) == len(timeline["t"])
    summary = sampler.summary()
    assert summary is not None
    assert summary["gpus"][0]["mean_util_pct"] == 50.0
    assert summary["gpus"][1]["mean_util_pct"] == 60.0
    assert summary["mean_util_pct"] == 55.0
    assert summary["peak_mem_bytes"] > 2 * 2**30


def test_without_nvml_it_says_why_once_and_records_nothing() -> None:
    with GpuSampler([0], nvml=FakeNvml(fail_init=True)) as sampler:
        pass
    assert sampler.summary() is None
    assert sampler.unavailable == ("NVML unavailable (RuntimeError: NVML Shared Library "
                                   "Not Found)")
