"""A fake NVML module with pynvml's interface, for the GPU path of budgets on CPU machines."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeNvml:
    """pynvml's interface: GPUs 0..max(util), each cycling through its utilisation pattern.

    With the default patterns: GPU 0 peaks at 10 GiB on every 4th sample, GPU 1 holds
    4 GiB (a group peak of 14 GiB). The device queries an inventory makes (count, UUID,
    name, memory) answer too, so code that maps CUDA_VISIBLE_DEVICES to NVML runs on it.
    """

    def __init__(self, util: dict[int, list[int]], names: dict[int, str] | None = None) -> None:
        self.util = util
        self.samples = {i: 0 for i in util}
        self.names = names or {}

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return max(self.util) + 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < self.nvmlDeviceGetCount():
            raise ValueError(f"NVML: no GPU {index}")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}{handle}{handle}fake-0000-0000-0000-00000000000{handle}"

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.names.get(handle, "NVIDIA H200")

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        pattern = self.util[handle]
        value = pattern[self.samples[handle] % len(pattern)]
        self.samples[handle] += 1
        return SimpleNamespace(gpu=value)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        n = self.samples.get(handle, 0)
        used = (10 if n % 4 == 3 else 6) * 2**30 if handle == 0 else 4 * 2**30
        return SimpleNamespace(used=used, total=141 * 2**30, free=141 * 2**30 - used)
