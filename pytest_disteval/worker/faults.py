"""Out of GPU memory, and the faults tests inject into a worker (``DISTEVAL_FAULT``).

Where the backend's batch size is a number (hf), a run that runs out of GPU
memory is retried in the same process at half the batch size, down to 1; past
that, or on a backend that sizes its own batches (vllm), ``BadRequest`` says what
to change. The injected faults are how the retries, the job timeout and a kill
mid-shard are tested where no GPU can run out or hang.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pytest_disteval.worker.spec import BadRequest


def is_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or the RuntimeError older torch and some kernels raise."""
    text = str(exc).lower()
    return (type(exc).__name__ == "OutOfMemoryError"
            or ("out of memory" in text and ("cuda" in text or "hip" in text)))


def _real_lm(lm: Any) -> Any:
    return getattr(lm, "lm", lm)  # a ShardLM wraps the backend's LM


def halve_batch(lm: Any, exc: BaseException, log: list[dict[str, Any]]) -> None:
    """After an OOM: halve the backend's batch size for a retry, or raise BadRequest."""
    real = _real_lm(lm)
    size = getattr(real, "batch_size_per_gpu", None)  # lm-eval's HFLM; "auto" sizes itself
    if type(size) is int and size > 1:
        real.batch_size_per_gpu = size // 2
        log.append({"from": size, "to": size // 2})
        print(f"[disteval] out of memory at batch size {size}; retrying at {size // 2}",
              flush=True)
        try:
            import torch

            torch.cuda.empty_cache()  # the failed batch's blocks go back before the retry
        except Exception:
            pass
        return
    first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if type(size) is int:
        what = ("out of GPU memory at batch size 1: one request does not fit beside the "
                "model; use a larger tp (or pp), a smaller dtype, or a shorter max_length")
    else:
        what = ("out of GPU memory, and this backend sizes its own batches; lower "
                "gpu_memory_utilization or max_model_len in model_args, or use a larger tp")
    tried = ", ".join(str(r["to"]) for r in log)
    raise BadRequest(f"{what} ({first})" + (f"; retried at batch size {tried}" if tried else ""))


def inject_oom(lm: Any) -> None:
    """``DISTEVAL_FAULT=oom:N`` (or ``oom:always``) makes model calls of more than N rows
    raise torch's OutOfMemoryError: how the retry is tested where no GPU can run out."""
    fault = os.environ.get("DISTEVAL_FAULT", "")
    if not fault.startswith("oom:"):
        return
    import torch

    limit = 0 if fault == "oom:always" else int(fault.split(":", 1)[1])
    real = _real_lm(lm)
    model_call = real._model_call

    def call(inps: Any, *args: Any, **kwargs: Any) -> Any:
        if inps.shape[0] > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of "
                                         f"{inps.shape[0]} (injected by DISTEVAL_FAULT={fault})")
        return model_call(inps, *args, **kwargs)

    real._model_call = call


def injected_fault(index: int, run_dir: Path) -> None:
    """``DISTEVAL_FAULT=shard<i>:once|always`` makes shard i crash: how retries are tested.

    ``shard<i>:slow`` makes it slow instead (see _slowed): how a kill mid-shard is tested.
    """
    fault = os.environ.get("DISTEVAL_FAULT", "")
    name, _, how = fault.partition(":")
    if name != f"shard{index}" or how == "slow":
        return
    marker = run_dir / f"fault-shard{index}"
    if how == "always" or not marker.exists():
        marker.touch()
        raise RuntimeError(f"fault injected by DISTEVAL_FAULT={fault}")


def slowed(lm: Any, index: int) -> Any:
    """With ``DISTEVAL_FAULT=shard<i>:slow``, each call of shard i's model takes 0.25 s more."""
    if os.environ.get("DISTEVAL_FAULT") != f"shard{index}:slow":
        return lm
    for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        real = getattr(lm, kind)

        def slow(requests: Any, real: Any = real) -> Any:
            time.sleep(0.25)
            return real(requests)

        setattr(lm, kind, slow)
    return lm
