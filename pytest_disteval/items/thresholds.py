"""Thresholds: read a score from lm-eval's results, decide, explain.

lm-eval does the scoring; this module only compares. Messages read like a good
assertion: what was measured (± stderr, n), what was required, by how much it
missed, and where the requirement was written. ``Verdict`` is also a budget's
(budgets.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pytest_disteval.suite.model import Threshold


@dataclass(frozen=True)
class Score:
    task: str
    metric: str  # "acc,none"
    value: float
    stderr: float | None  # None when lm-eval reports "N/A"
    n: int | None
    higher_is_better: bool | None

    def text(self) -> str:
        err = f" ± {self.stderr:.4f}" if self.stderr is not None else " ± N/A"
        n = f" (n={self.n})" if self.n is not None else ""
        return f"{self.value:.4f}{err}{n}"


class MissingMetric(LookupError):
    def __init__(self, task: str, metric: str, available: list[str]) -> None:
        self.task, self.metric, self.available = task, metric, available
        super().__init__(
            f"lm-eval reported no metric {metric!r} for task {task!r}; "
            f"available: {', '.join(available) or 'none'}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # lm-eval writes the string "N/A" where a stderr cannot be computed
    return float(value)


def _n_samples(lm_eval: dict[str, Any], task: str) -> int | None:
    samples = lm_eval.get("n-samples", {})
    if task in samples:
        return int(samples[task].get("effective", 0))
    # a group: the sum over its leaf tasks
    children = (lm_eval.get("group_subtasks") or {}).get(task)
    if not children:
        return None
    counts = [_n_samples(lm_eval, child) for child in children]
    return sum(c for c in counts if c is not None) if any(c is not None for c in counts) else None


def read_score(lm_eval: dict[str, Any], task: str, metric: str) -> Score:
    """The score of ``metric`` ("acc,none") for ``task`` in an lm-eval results slice."""
    table = lm_eval.get("results", {}).get(task)
    if table is None:
        raise MissingMetric(task, metric, [])
    available = sorted(k for k in table if "," in k and "_stderr," not in k and k != "alias")
    if metric not in table:
        raise MissingMetric(task, metric, available)
    name, flt = metric.split(",", 1)
    value = _number(table[metric])
    if value is None:
        raise MissingMetric(task, metric, available)
    hib = (lm_eval.get("higher_is_better", {}).get(task) or {}).get(name)
    return Score(task, metric, value, _number(table.get(f"{name}_stderr,{flt}")),
                 _n_samples(lm_eval, task), hib if isinstance(hib, bool) else None)


@dataclass(frozen=True)
class Verdict:
    """A threshold's or a budget's decision, with the lines that explain it."""

    passed: bool
    required: str  # "acc >= 0.9000", "wall_time <= 1m"
    margin: float  # how far inside (+) or outside (-) the bound, in the measured unit
    lines: list[str]


def check_threshold(threshold: Threshold, score: Score) -> Verdict:
    lo, hi = threshold.min, threshold.max
    if not threshold.direction_given and score.higher_is_better is False:
        lo, hi = None, lo  # a bare number on a lower-is-better metric is a maximum
    allowance = 0.0
    notes: list[str] = []
    if threshold.tolerance:
        if score.stderr is None:
            notes.append(f"tolerance {threshold.tolerance:g} x stderr not applied: stderr is N/A")
        else:
            allowance = threshold.tolerance * score.stderr
    parts = []
    margins = []
    if lo is not None:
        parts.append(f">= {lo:.4f}")
        margins.append(score.value - (lo - allowance))
    if hi is not None:
        parts.append(f"<= {hi:.4f}")
        margins.append((hi + allowance) - score.value)
    required = f"{threshold.written} {' and '.join(parts)}"
    if allowance:
        required += f" (tolerance {threshold.tolerance:g} x stderr = {allowance:.4f})"
    margin = min(margins)
    passed = not math.isnan(score.value) and margin >= 0
    lines = [f"{score.task} {threshold.written} = {score.text()}", f"required: {required}"]
    if math.isnan(score.value):
        lines.append("the score is NaN")
    elif not passed:
        lines.append(f"missed by {-margin:.4f}")
    lines.extend(notes)
    return Verdict(passed, required, margin, lines)

