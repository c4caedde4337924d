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
# CUDA's device order; the other value, FASTEST_FIRST, is CUDA's default
PCI_BUS_ID = "PCI_BUS_ID"


def _nvml_module(nvml: Any) -> Any:
    if nvml is not None:
        return nvml  # a module with pynvml's interface (tests pass one)
    import pynvml  # lazily: collection never needs it

    return pynvml


def nvml_unavailable(exc: BaseException) -> str:
    """The reason NVML budgets give when NVML could not start: the same wherever it runs."""
    return f"NVML unavailable ({type(exc).__name__}: {exc})"


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
        if self.unavailable is not None:
            return self  # known before starting (cuda_visible_sampler): nothing to sample
        try:
            self._nvml = _nvml_module(self._nvml)
            self._nvml.nvmlInit()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
        except Exception as exc:  # no driver, no library, a GPU gone: say so, carry on
            self.unavailable = nvml_unavailable(exc)
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


def cuda_visible_sampler(visible: str, device_order: str | None, *, nvml: Any = None,
                         period: float = DEFAULT_PERIOD_S) -> GpuSampler:
    """A sampler (not started) over the GPUs ``CUDA_VISIBLE_DEVICES`` names, by NVML index.

    For a worker whose GPUs were chosen elsewhere (a Ray actor's: Ray sets the
    variable). NVML ignores ``CUDA_VISIBLE_DEVICES`` and numbers every GPU of the
    node in PCI bus order; CUDA numbers them in ``CUDA_DEVICE_ORDER``: PCI_BUS_ID
    gives NVML's order, and the default, FASTEST_FIRST, gives it too in practice
    when all the node's GPUs are one model (equally fast, then by bus id). So an
    ordinal is read as the NVML index (gpus.select_visible, as for this host's
    inventory) under PCI_BUS_ID or on a node of one GPU model, and refused on a
    mixed node without PCI_BUS_ID (``unavailable`` says what to set) rather than
    sampling GPUs the worker may not be using. UUIDs are matched whatever the
    order. Where NVML cannot start, ``unavailable`` says why, as GpuSampler does.
    """
    from pytest_disteval.gpu.inventory import NoGPUError, NvmlInventory, select_visible

    # the device numbers (ordinals) among the entries: NVML indices only in NVML's order
    guess = [int(e) for e in visible.split(",") if e.strip().isdigit()]
    unavailable = None
    chosen = []
    try:
        # every GPU of the node, in NVML's order (an empty environ: no restriction)
        every = NvmlInventory(nvml=nvml, environ={}).gpus()
        chosen = select_visible(every, visible)
        names = sorted({g.name for g in every})
        if not chosen:
            unavailable = f"GPUs not sampled: CUDA_VISIBLE_DEVICES={visible!r} names no GPU"
        elif (guess and len(names) > 1
              and (device_order or "").strip().upper() != PCI_BUS_ID):
            unavailable = (
                f"GPUs not sampled: this node's GPUs are of different models "
                f"({', '.join(names)}) and CUDA_DEVICE_ORDER is "
                f"{device_order or 'unset (FASTEST_FIRST)'}, so the device numbers in "
                f"CUDA_VISIBLE_DEVICES={visible!r} need not be NVML's; set "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID in the environment of `ray start` there")
    except NoGPUError as exc:  # no library, no driver: the sampler's own wording
        unavailable = nvml_unavailable(exc.__cause__ or exc)
    except ValueError as exc:  # an entry select_visible cannot read (MIG, no such GPU)
        unavailable = f"GPUs not sampled: {exc}"
    except Exception as exc:  # an NVML call that failed: as if it could not start
        unavailable = nvml_unavailable(exc.__cause__ or exc)
    sampler = GpuSampler([g.index for g in chosen] if unavailable is None else guess,
                         period, nvml)
    sampler.unavailable = unavailable
    return sampler
