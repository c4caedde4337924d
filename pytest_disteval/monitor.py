"""NVML sampling beside a job: each GPU's utilisation and memory over time.

It replaces `watch nvidia-smi`: the timeline is kept with the job's run, where the
job record (jobrecord.gpu_section) derives every figure the budgets, the items'
properties and the reports use. Where NVML cannot start, the sampler says why
once and records nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_PERIOD_S = 0.5


class GpuSampler:
    """Samples the GPUs with the given NVML indices every ``period`` seconds."""

    def __init__(self, indices: Sequence[int], period: float = DEFAULT_PERIOD_S,
                 nvml: Any = None) -> None:
        self.indices = list(indices)
        self.period = period
        self.unavailable: str | None = None
        self.times: list[float] = []
        self.util: dict[int, list[int]] = {i: [] for i in self.indices}
        self.mem: dict[int, list[int]] = {i: [] for i in self.indices}
        self._nvml = nvml
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> GpuSampler:
        try:
            if self._nvml is None:
                import pynvml  # lazily: collection never needs it

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
        except Exception as exc:  # no driver, no library, a GPU gone: say so, carry on
            self.unavailable = f"NVML unavailable ({type(exc).__name__}: {exc})"
            return self
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="disteval-gpu-sampler",
                                        daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.times.append(round(time.monotonic() - self._t0, 3))
        for index, handle in zip(self.indices, self._handles, strict=True):
            self.util[index].append(int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            self.mem[index].append(int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as exc:  # a sample that fails ends the timeline, not the job
                self.unavailable = f"NVML sampling stopped ({type(exc).__name__}: {exc})"
                return
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def timeline(self) -> dict[str, Any]:
        """Samples as written to the run directory (times in seconds from the start)."""
        return {"period_s": self.period, "t": self.times, "unavailable": self.unavailable,
                "gpus": {str(i): {"util_pct": self.util[i], "mem_used_bytes": self.mem[i]}
                         for i in self.indices}}
