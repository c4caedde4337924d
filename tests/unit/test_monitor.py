"""The NVML sampler, against a fake NVML module (the real one runs in tests/test_gpu.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pytest_disteval import jobrecord
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
