"""Regression items: a score compared with the baseline's, failing only beyond noise.

``compare`` is pure (scores, per-document results, tolerance, alpha -> a
decision and its explanation); ``RegressionItem`` is the pytest item around it,
one per threshold metric of a task entry (and per metric under its
``regression:`` key) when ``--disteval-baseline`` is given (regression/plugin.py
adds them through the ``pytest_disteval_task_items`` hook). Node ids read
``suites/smoke.yaml::tiny-arith::arith_mc::acc[regression]``: selecting
``...::arith_mc::acc`` selects the threshold and its regression item together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_disteval.items.nodes import DistevalFailure, DistevalItem, TaskNode
from pytest_disteval.items.thresholds import MissingMetric, Score, read_score
from pytest_disteval.regression import stats
from pytest_disteval.regression.baseline import Baseline, entry_id, hardware_of
from pytest_disteval.state import SETTINGS
from pytest_disteval.store.samples import Example, Pairing, pair, read_samples
from pytest_disteval.suite.model import Loc, TaskEntry, Tolerance

EXAMPLES = 3  # flipped documents shown per direction
NO_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class Comparison:
    passed: bool
    test: str  # "z", "mcnemar", "paired-t"
    p_value: float
    alpha: float
    delta: float  # now - baseline, signed as the scores read
    worse_by: float  # positive: worse, in the metric's direction
    allowed: float  # the tolerance in the metric's units
    pairing: Pairing | None
    lines: list[str] = field(default_factory=list)


def _direction(now: Score, baseline: Score, notes: list[str]) -> bool:
    for hib in (now.higher_is_better, baseline.higher_is_better):
        if hib is not None:
            return hib
    notes.append("lm-eval gives no higher_is_better for this metric: higher is taken as better")
    return True


def _example(ex: Example) -> str:
    return (f"doc {ex.doc_id}: target {ex.target!r}, baseline {ex.baseline_response!r}, "
            f"now {ex.response!r}")


def compare(baseline: Score, now: Score, *, alpha: float, tolerance: Tolerance = NO_TOLERANCE,
            baseline_samples: dict[str, Any] | None = None,
            samples: dict[str, Any] | None = None) -> Comparison:
    """Did ``now`` get worse than ``baseline`` beyond noise and beyond the tolerance?

    A paired test where both runs have per-document values of the metric on the same
    documents (exact McNemar for a binary metric, a paired t-test otherwise), else a
    z-test on the two scores and their stderrs. The change is a regression when it
    goes toward worse by more than the tolerance *and* the test's one-sided p-value
    is below alpha.
    """
    notes: list[str] = []
    hib = _direction(now, baseline, notes)
    worse = stats.worse_by(baseline.value, now.value, hib)
    allowed = tolerance.allowed(baseline.value)
    pairing: Pairing | None = None
    if baseline_samples is not None and samples is not None:
        paired = pair(baseline_samples, samples, now.metric, higher_is_better=hib,
                      examples=EXAMPLES)
        if isinstance(paired, Pairing):
            pairing = paired
        else:
            notes.append(f"no paired test: {paired}")
    else:
        side = "the baseline" if baseline_samples is None else "this run"
        notes.append(f"no paired test: {side} has no per-document results")
    if pairing is not None and pairing.binary:
        result = stats.mcnemar(pairing.n_worse, pairing.n_better)
        how = f"exact McNemar on {len(pairing.new)} paired documents"
    elif pairing is not None:
        result = stats.paired_t(pairing.baseline, pairing.new, higher_is_better=hib)
        how = (f"paired t-test on {len(pairing.new)} documents"
               + (" (normal approximation)" if len(pairing.new) > stats.LARGE_N else ""))
    else:
        missing = [side for side, s in (("baseline", baseline), ("now", now)) if s.stderr is None]
        if missing:
            notes.append(f"stderr N/A ({', '.join(missing)}): counted as 0, so any change "
                         "toward worse beyond the tolerance counts as beyond noise")
        result = stats.z_test(baseline.value, baseline.stderr or 0.0, now.value,
                              now.stderr or 0.0, higher_is_better=hib)
        how = "z-test on the two scores and their stderrs"
    nan = math.isnan(now.value)
    # beyond the tolerance by more than float rounding: 0.80 - 0.79 is 0.010000000000000009
    beyond = worse - allowed > 1e-9
    regressed = nan or (beyond and result.p_value < alpha)
    delta = now.value - baseline.value
    word = "higher" if hib else "lower"
    lines = [
        f"{now.task} {now.metric.removesuffix(',none')}: {now.text()} now, "
        f"baseline {baseline.text()} ({word} is better)",
        f"delta: {delta:+.4f}" + (f" (tolerance {allowed:.4f})" if allowed else ""),
        f"test: {how}: p = {result.p_value:.3g} "
        f"{'<' if result.p_value < alpha else '>='} alpha {alpha:g}",
    ]
    if nan:
        lines.append("the score is NaN")
    elif regressed:
        lines.insert(0, f"regressed by {worse:.4f}, beyond noise")
    elif worse > 0:
        lines.insert(0, f"worse by {worse:.4f}, "
                        + ("within noise" if beyond else "within the tolerance"))
    if pairing is not None:
        lines.append(f"documents flipped: {pairing.n_worse} better->worse, "
                     f"{pairing.n_better} worse->better")
        for title, examples in (("got worse", pairing.flipped_worse),
                                ("got better", pairing.flipped_better)):
            lines.extend(f"  {title}: {_example(ex)}" for ex in examples)
    lines.extend(notes)
    return Comparison(not regressed, result.test, result.p_value, alpha, delta, worse, allowed,
                      pairing, lines)


def _layout_text(hardware: str, layout: dict[str, Any]) -> str:
    shape = " ".join(f"{k}={layout[k]}" for k in ("tp", "pp", "dp") if k in layout)
    return f"{hardware} ({shape})" if shape else hardware


# ------------------------------------------------------------------------ the items


def regression_items(node: TaskNode, entry: TaskEntry,
                     baseline: Baseline) -> Iterator[RegressionItem]:
    """A task entry's regression items against ``baseline``; none with ``regression: false``."""
    if entry.regression is None:
        return
    wanted: dict[str, tuple[str, Loc]] = {}
    for t in entry.thresholds:
        wanted.setdefault(t.metric, (t.written, t.loc))
    for metric, tol in entry.regression.items():
        written = metric.removesuffix(",none")
        wanted.setdefault(metric, (written, tol.loc or entry.loc))
    for metric, (written, loc) in wanted.items():
        tolerance = entry.regression.get(metric, entry.regression_default)
        yield RegressionItem.from_parent(node, name=f"{written}[regression]", metric=metric,
                                         tolerance=tolerance, baseline=baseline,
                                         loc=tolerance.loc or loc)


class RegressionItem(DistevalItem):
    kind = "regression"

    def __init__(self, *, metric: str, tolerance: Tolerance, baseline: Baseline,
                 **kwargs: Any) -> None:
        self.metric_key = metric
        self.tolerance = tolerance
        self.baseline = baseline
        self.entry = kwargs["parent"].entry
        super().__init__(metric=metric, **kwargs)

    def runtest(self) -> None:
        assert self.entry is not None
        baseline = self.baseline
        metric = self.metric_key
        self.user_properties.extend([("task", self.entry.name), ("metric", metric)])
        outcome = self.outcome()
        stored = outcome.entries.get(self.entry.name)
        if stored is None:
            raise self.job_failed(outcome, f"{self.entry.task} {metric} regression")
        key = entry_id(str(self.job.suite.path), self.job.name, self.entry.name)
        recorded = baseline.entry(key)
        if recorded is None:
            pytest.skip(f"no baseline for {key} in {baseline.path} (created {baseline.created}); "
                        "save one with --disteval-save-baseline")
        base = Baseline.score(recorded, metric)
        if base is None:
            has = ", ".join(m.removesuffix(",none") for m in recorded["metrics"]) or "none"
            pytest.skip(f"the baseline {baseline.path} has no metric {metric!r} for {key} "
                        f"(it has: {has})")
        try:
            now = read_score(stored["lm_eval"], self.entry.task, metric)
        except MissingMetric as exc:
            self.user_properties.append(("verdict", "fail"))
            raise DistevalFailure([str(exc), f"defined at: {self.loc}"]) from None
        path = self.scheduler.store.path(stored["model_key"], stored["entry_key"])
        samples = (read_samples(path, stored["entry_key"]) or {}).get(self.entry.task)
        result = compare(base, now, alpha=self.config.stash[SETTINGS].alpha,
                         tolerance=self.tolerance, baseline_samples=recorded.get("samples"),
                         samples=samples)
        hardware, layout = hardware_of(self)
        base_hardware = _layout_text(str(recorded.get("hardware", "unknown")),
                                     recorded.get("layout") or {})
        now_hardware = _layout_text(hardware, layout)
        pairing = result.pairing
        self.user_properties.extend([
            ("score", now.value),
            ("stderr", now.stderr if now.stderr is not None else "N/A"),
            ("n_samples", now.n if now.n is not None else ""),
            ("baseline_score", base.value),
            ("baseline_stderr", base.stderr if base.stderr is not None else "N/A"),
            ("delta", round(result.delta, 6)),
            ("test", result.test),
            ("p_value", result.p_value),
            ("alpha", result.alpha),
            ("flipped_worse", pairing.n_worse if pairing else 0),
            ("flipped_better", pairing.n_better if pairing else 0),
            ("baseline_hardware", base_hardware),
            ("hardware", now_hardware),
            ("cached", self.entry.name in outcome.cached),
            ("eval_s", round(float(stored["timing"]["eval_s"]), 3)),
            ("defined_at", str(self.loc)),
            ("verdict", "pass" if result.passed else "fail"),
        ])
        if not result.passed:
            raise DistevalFailure([
                *result.lines,
                f"hardware: baseline {base_hardware}; now {now_hardware}",
                f"baseline: {baseline.path} (created {baseline.created}, computed "
                f"{recorded.get('computed_at', '?')})",
                f"model: {self.job.name} ({self.job.model.backend})",
                f"defined at: {self.loc}",
            ])
