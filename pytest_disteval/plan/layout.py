"""tp/pp/dp planning: a model's memory estimate checked against the GPUs granted.

Imported at pytest collection time: the estimate comes from ``sizing`` (local files
only), never from torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pytest_disteval.plan.sizing import MEMORY_OVERHEAD, LayoutError


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LayoutError(f"{name} must be a whole number >= 1, not {value!r}")

    @property
    def group_size(self) -> int:
        return self.tp * self.pp

    @property
    def devices(self) -> int:
        return self.group_size * self.dp

    def __str__(self) -> str:
        return f"tp={self.tp} pp={self.pp} dp={self.dp}"


# ---------------------------------------------------------------------------- dtypes











# ---------------------------------------------------------------------------- model files
























# ---------------------------------------------------------------------------- planning


def _gb(n: float) -> str:
    value = n / 1e9
    return f"{value:.0f} GB" if value >= 100 else f"{value:.3g} GB"


def _gib(n: float) -> str:
    value = n / 2**30
    return f"{value:.0f} GiB" if value >= 100 else f"{value:.3g} GiB"


def _powers_of_two(limit: int) -> list[int]:
    return [1 << k for k in range(max(limit, 1).bit_length()) if 1 << k <= limit]


def plan_layout(
    *,
    gpus_granted: int,
    gpu_memory: int,
    memory_needed: int | None = None,
    tp: int | Literal["auto"] | None = None,
    pp: int | None = None,
    dp: int | None = None,
    heads: int | None = None,
    needs_heads_divisible: bool = False,
    gpus_source: str | None = None,
) -> Layout:
    """The layout to run, or a LayoutError that says what to change.

    gpu_memory: bytes of the smallest granted GPU. memory_needed: bytes one replica needs
    (estimate_memory), None when unknown. tp: a number, or "auto" / None for the smallest
    power of 2 whose share of memory_needed fits a GPU. dp None: as many groups as the
    GPUs allow. heads / needs_heads_divisible: the backend splits attention heads over tp.
    gpus_source: where gpus_granted came from, for messages ("--gpus 8").
    """
    granted = f"{gpus_granted} granted" + (f" ({gpus_source})" if gpus_source else "")
    if gpus_granted < 1:
        raise LayoutError(f"a GPU layout needs at least 1 GPU; {granted}")
    pp = 1 if pp is None else pp
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp)):
        if value is None or (name == "tp" and value == "auto"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LayoutError(f"{name} must be a whole number >= 1 or unset, not {value!r}")
    plan = _Planner(gpus_granted, gpu_memory, memory_needed, pp,
                    heads if needs_heads_divisible else None, granted)  # fmt: skip
    if tp is None or tp == "auto":
        if pp > gpus_granted:
            raise LayoutError(f"pp={pp} needs {pp} GPUs for one group; {granted}")
        candidates = plan.candidates(gpus_granted // pp)
        if not candidates:
            raise LayoutError(
                f"no tp up to {gpus_granted // pp} divides the {heads} attention heads"
            )
        tp_value = next((t for t in candidates if plan.fits(t)), 0)
        if not tp_value:
            raise plan.too_big(candidates[-1])
    else:
        tp_value = int(tp)
        if plan.heads is not None and plan.heads % tp_value:
            valid = [t for t in range(1, plan.heads + 1)
                     if plan.heads % t == 0 and t * pp <= gpus_granted]  # fmt: skip
            raise LayoutError(
                f"tp={tp_value} does not divide the model's {plan.heads} attention heads; "
                f"valid tp values with {granted}: {', '.join(map(str, valid)) or 'none'}"
            )
        if tp_value * pp > gpus_granted:
            raise LayoutError(
                f"tp={tp_value} x pp={pp} needs {tp_value * pp} GPUs for one group; {granted}"
            )
        if not plan.fits(tp_value):
            raise plan.too_big(tp_value)
    group = tp_value * pp
    if dp is None:
        dp = gpus_granted // group
    elif group * dp > gpus_granted:
        raise LayoutError(
            f"tp={tp_value} x pp={pp} x dp={dp} needs {group * dp} GPUs; {granted}; "
            f"at most dp={gpus_granted // group} fits"
        )
    return Layout(tp=tp_value, pp=pp, dp=dp)


@dataclass(frozen=True)
class _Planner:
    """The fixed facts of one plan_layout call, and the questions asked of them."""

    gpus: int
    gpu_memory: int
    needed: int | None
    pp: int
    heads: int | None  # None when tp need not divide the heads
    granted: str

    def candidates(self, limit: int) -> list[int]:
        """tp values to try: powers of 2 up to `limit` that divide the heads."""
        return [t for t in _powers_of_two(limit) if self.heads is None or self.heads % t == 0]

    def fits(self, tp: int) -> bool:
        return self.needed is None or self.needed <= tp * self.pp * self.gpu_memory

    def too_big(self, tp: int) -> LayoutError:
        needed = self.needed or 0
        group = tp * self.pp
        return LayoutError(
            f"the model needs about {_gb(needed)} ({_gib(needed)}) per replica (params x "
            f"bytes per param x {MEMORY_OVERHEAD}): tp={tp} x pp={self.pp} puts "
            f"{_gb(needed / group)} on each GPU, but a GPU has {_gb(self.gpu_memory)} "
            f"({_gib(self.gpu_memory)}) and a group of {group} has {_gb(group * self.gpu_memory)}; "
            f"{self.hint(needed)}"
        )

    def hint(self, needed: int) -> str:
        fitting = [t for t in self.candidates(self.gpus // self.pp) if self.fits(t)]
        if fitting:
            t = fitting[0]
            return f"tp={t} would fit ({_gb(needed / (t * self.pp))} per GPU)"
        beyond = [t for t in self.candidates(1 << 16) if self.fits(t)]
        if not beyond:
            return f"no tp fits with {self.granted}"
        t = beyond[0]
        return (
            f"no tp fits with {self.granted}: tp={t} x pp={self.pp} would need "
            f"{t * self.pp} GPUs of this size ({_gb(needed / (t * self.pp))} per GPU), "
            "or use GPUs with more memory or a smaller dtype"
        )
