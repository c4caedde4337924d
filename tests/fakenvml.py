"""A fake NVML module with pynvml's interface, for the GPU path of budgets on CPU machines."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeNvml:
    """pynvml's interface: two GPUs, GPU 1 idle half the time, memory rising."""

    def __init__(self, util: dict[int, list[int]]) -> None:
        self.util = util
        self.samples = {i: 0 for i in util}

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        pattern = self.util[handle]
        value = pattern[self.samples[handle] % len(pattern)]
        self.samples[handle] += 1
        return SimpleNamespace(gpu=value)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        # GPU 0 peaks at 10 GiB on its 3rd sample, GPU 1 holds 4 GiB: group peak 14 GiB
        n = self.samples[handle]
        return SimpleNamespace(used=(10 if n % 4 == 3 else 6) * 2**30 if handle == 0
                               else 4 * 2**30)
