"""Budget kinds: how each is written, what it measures in the job record, how it is judged.

One table (``KINDS``) says, per kind, the unit it is written in, whether it is a
ceiling (``<=``) or a floor (``>=``), whether it applies to the job or to each task
entry, and whether it needs the NVML sampler. Measurements come from the job record
(jobrecord.py); a budget whose figure is not there is skipped with the reason.
No torch, no lm-eval: this runs at collection and in the pytest process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_disteval.items.thresholds import Verdict
from pytest_disteval.units import (
    format_duration,
    parse_budget_size,
    parse_duration,
    parse_percent,
    parse_rate,
)


class DistevalImbalanceWarning(pytest.PytestWarning):
    """The GPUs of one group were unevenly used (one busy, another idle much of the time).

    A warning, not a failure: filter it with
    ``filterwarnings = ignore::pytest_disteval.DistevalImbalanceWarning`` where
    ``filterwarnings = error`` would otherwise turn it into an error.
    """


# mean utilisation of two GPUs of one group further apart than this (percentage points)
IMBALANCE_POINTS = 25.0


class Unmeasured(LookupError):
    """The job record lacks the figure a budget needs; the message is the skip reason."""


@dataclass(frozen=True)
class Kind:
    name: str
    parse: Callable[[object], float]
    floor: bool  # True: measured >= bound passes; False: measured <= bound passes
    unit: str  # the unit of the "measured" property: s, req/s, tok/s, GiB or %
    per_task: bool
    needs_gpu: bool
    forms: str  # valid forms, for messages

    @property
    def sign(self) -> str:
        return ">=" if self.floor else "<="


def _size(value: object) -> float:
    return float(parse_budget_size(value))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("wall_time", parse_duration, False, "s", False, False, "a duration, e.g. 90s, 30m"),
    Kind("load_time", parse_duration, False, "s", False, False, "a duration, e.g. 90s, 2m"),
    Kind("task_time", parse_duration, False, "s", True, False, "a duration, e.g. 90s, 2m"),
    Kind("requests_per_s", lambda v: parse_rate(v, ("req", "requests")), True, "req/s", False,
         False, "a rate, e.g. 50/s, 50 req/s, 600/min"),
    Kind("tokens_per_s", lambda v: parse_rate(v, ("tok", "tokens")), True, "tok/s", False,
         False, "a rate, e.g. 1000/s, 1000 tok/s"),
    Kind("gpu_memory", _size, False, "GiB", False, True, "a size, e.g. 20GiB, 20GB"),
    Kind("group_gpu_memory", _size, False, "GiB", False, True, "a size, e.g. 80GiB"),
    Kind("host_rss", _size, False, "GiB", False, False, "a size, e.g. 16GiB, 500MB"),
    Kind("gpu_util", parse_percent, True, "%", False, True, "a percentage, e.g. 40%"),
)}
TASK_KINDS = tuple(k for k, v in KINDS.items() if v.per_task)


def parse_limit(kind: str, value: object) -> float:
    """The bound of a budget (seconds, per second, bytes or percent); ValueError says why."""
    return KINDS[kind].parse(value)


# ------------------------------------------------------------------ formatting


def _decimal(written: str) -> bool:
    """Whether a size was written in powers of 10 (GB, MB): show figures the same way."""
    return bool(re.search(r"\d\s*[KMGT]B\s*$", written, re.I))


def format_value(kind: str, value: float, written: str = "") -> str:
    unit = KINDS[kind].unit
    if unit == "s":
        return format_duration(value)
    if unit in ("req/s", "tok/s"):
        return f"{value:.3g}/s" if value < 100 else f"{value:.0f}/s"
    if unit == "%":
        return f"{value:.1f}%"
    if _decimal(written):
        for name, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
            if value >= factor:
                return f"{value / factor:.4g} {name}"
        return f"{value:.0f} B"
    for name, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= factor:
            return f"{value / factor:.4g} {name}"
    return f"{value:.0f} B"


def property_value(kind: str, value: float) -> float:
    """``measured`` as a user property: sizes in GiB, the rest in the kind's own unit."""
    if KINDS[kind].unit == "GiB":
        return round(value / 2**30, 4)
    return round(value, 3)


# ------------------------------------------------------------------ measuring


def measure(kind: str, record: dict[str, Any] | None, entry: str | None = None) -> float:
    """The figure ``kind`` is judged on, from a job record; Unmeasured says why there is none."""
    if record is None:
        # budget items see no record only when every entry came from the store
        raise Unmeasured("the results came from the store, and no measurements were recorded "
                         "for this set of tasks; run with --disteval-no-cache to measure the "
                         "whole job")
    spec = KINDS[kind]
    if spec.per_task:
        task = (record.get("tasks") or {}).get(entry)
        if task is None or task.get("eval_s") is None:
            raise Unmeasured(f"task entry {entry!r} was not evaluated in this session and no "
                             "time was recorded for it")
        return float(task["eval_s"])
    if record.get("partial"):
        raise Unmeasured("only part of the job ran in this session, the rest came from the "
                         "store; run with --disteval-no-cache to measure the whole job")
    if spec.needs_gpu:
        gpu = record.get("gpu")
        if gpu is None:
            raise Unmeasured(record.get("gpu_unavailable") or "no GPU was sampled for this job")
        if kind == "gpu_memory":
            return float(max(d["peak_mem_bytes"] for d in gpu["per_device"].values()))
        if kind == "group_gpu_memory":
            return float(gpu["group_peak_mem_bytes"])
        return float(gpu["mean_util_pct"])
    field = {"wall_time": "wall_s", "load_time": "load_s", "requests_per_s": "requests_per_s",
             "tokens_per_s": "tokens_per_s", "host_rss": "host_peak_rss_bytes"}[kind]
    value = record.get(field)
    if value is None:
        why = {"tokens_per_s": "the backend's model has no tokenizer the worker could count "
                               "tokens with",
               "load_time": "no model was loaded in this session"}.get(kind, f"no {field}")
        raise Unmeasured(f"{kind} was not measured: {why}")
    return float(value)


def check(kind: str, limit: float, measured: float, written: str = "",
          detail: list[str] | None = None) -> Verdict:
    """Compare; the message says which way the bound goes and by how much it missed."""
    spec = KINDS[kind]

    def fmt(value: float) -> str:
        return format_value(kind, value, written)

    margin = measured - limit if spec.floor else limit - measured
    passed = margin >= 0
    required = f"{kind} {spec.sign} {fmt(limit)}"
    lines = [f"{kind} = {fmt(measured)}, required {spec.sign} {fmt(limit)}"
             + ("" if passed else f", {'short' if spec.floor else 'over'} by {fmt(-margin)}")]
    lines.extend(detail or [])
    return Verdict(passed, required, margin, lines)


def detail(kind: str, record: dict[str, Any], written: str = "") -> list[str]:
    """Lines that help act on a budget's figure: which GPU, how counted."""
    gpu = record.get("gpu") or {}
    if kind == "gpu_memory" and gpu:
        return ["peak memory per GPU: " + ", ".join(
            f"GPU {i} {format_value(kind, d['peak_mem_bytes'], written)}"
            for i, d in sorted(gpu["per_device"].items(), key=lambda x: int(x[0])))]
    if kind == "gpu_util" and gpu:
        lines = ["mean utilisation per GPU: " + ", ".join(
            f"GPU {i} {d['mean_util_pct']:.1f}%"
            for i, d in sorted(gpu["per_device"].items(), key=lambda x: int(x[0])))]
        if gpu.get("imbalance"):
            lines.append(f"imbalance: {gpu['imbalance']}")
        return lines
    if kind in ("requests_per_s", "tokens_per_s"):
        what = "requests" if kind == "requests_per_s" else "tokens"
        eval_s = record.get("eval_s")
        spent = format_duration(eval_s) if isinstance(eval_s, float | int) else "?"
        return [f"{what} counted: {record.get(what)}, over {spent} of evaluation "
                "(lm-eval's simple_evaluate calls)"]
    return []
