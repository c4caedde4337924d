"""Thresholds against lm-eval result slices: directions, tolerance, NaN, N/A, missing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pytest_disteval.items import budgets
from pytest_disteval.items.thresholds import (
    MissingMetric,
    Verdict,
    check_threshold,
    read_score,
)
from pytest_disteval.suite.model import Budget, Loc, Threshold
from pytest_disteval.units import parse_duration

LOC = Loc(Path("suites/x.yaml"), 7)


def results(value: object, stderr: object = 0.01, hib: bool = True) -> dict[str, object]:
    return {
        "results": {"t": {"alias": "t", "acc,none": value, "acc_stderr,none": stderr}},
        "higher_is_better": {"t": {"acc": hib}},
        "n-samples": {"t": {"original": 250, "effective": 200}},
    }


def threshold(lo: float | None = None, hi: float | None = None, tol: float = 0.0,
              given: bool = True) -> Threshold:
    return Threshold("acc,none", "acc", lo, hi, tol, given, LOC)


def test_score_reads_value_stderr_and_n() -> None:
    score = read_score(results(0.75, 0.02), "t", "acc,none")
    assert (score.value, score.stderr, score.n, score.higher_is_better) == (0.75, 0.02, 200, True)


def test_minimum_pass_and_fail_with_margin() -> None:
    score = read_score(results(0.75), "t", "acc,none")
    assert check_threshold(threshold(0.7), score).passed
    verdict = check_threshold(threshold(0.8), score)
    assert not verdict.passed
    assert verdict.lines == ["t acc = 0.7500 ± 0.0100 (n=200)", "required: acc >= 0.8000",
                             "missed by 0.0500"]


def test_tolerance_in_units_of_stderr() -> None:
    score = read_score(results(0.75, 0.03), "t", "acc,none")
    assert check_threshold(threshold(0.8, tol=2), score).passed  # 0.8 - 2*0.03 = 0.74
    assert not check_threshold(threshold(0.8, tol=1), score).passed


def test_stderr_na_is_handled() -> None:
    score = read_score(results(0.75, "N/A"), "t", "acc,none")
    assert score.stderr is None
    verdict = check_threshold(threshold(0.8, tol=3), score)
    assert not verdict.passed
    assert "tolerance 3 x stderr not applied: stderr is N/A" in verdict.lines
    assert verdict.lines[0] == "t acc = 0.7500 ± N/A (n=200)"


def test_nan_fails_even_without_bound_violation() -> None:
    score = read_score(results(float("nan")), "t", "acc,none")
    verdict = check_threshold(threshold(hi=1.0), score)
    assert not verdict.passed and "the score is NaN" in verdict.lines


def test_direction_follows_higher_is_better_unless_stated() -> None:
    score = read_score(results(12.0, hib=False), "t", "acc,none")
    assert check_threshold(threshold(15.0, given=False), score).passed  # a maximum
    assert not check_threshold(threshold(10.0, given=False), score).passed
    assert not check_threshold(threshold(15.0, given=True), score).passed  # min: stated


def test_missing_metric_lists_available() -> None:
    with pytest.raises(MissingMetric) as info:
        read_score(results(0.5), "t", "acc_norm,none")
    assert info.value.available == ["acc,none"]
    assert "available: acc,none" in str(info.value)


def test_group_n_is_the_sum_of_its_tasks() -> None:
    data = {
        "results": {"g": {"acc,none": 0.5, "acc_stderr,none": 0.1}},
        "group_subtasks": {"g": ["a", "b"]},
        "n-samples": {"a": {"effective": 10}, "b": {"effective": 30}},
    }
    assert read_score(data, "g", "acc,none").n == 40


def test_a_budget_is_judged_as_its_item_judges_it_into_the_same_verdict() -> None:
    budget = Budget("wall_time", 60.0, "1m", LOC)
    assert budgets.check(budget.kind, budget.limit, 59.0, budget.written).passed
    verdict = budgets.check(budget.kind, budget.limit, 75.0, budget.written)
    assert isinstance(verdict, Verdict)  # one Verdict for thresholds and budgets
    assert (verdict.passed, verdict.margin, verdict.required) == (False, -15.0,
                                                                  "wall_time <= 60.0s")
    assert verdict.lines[-1] == "wall_time = 75.0s, required <= 60.0s, over by 15.0s"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1.5h", 5400),
                                               ("250ms", 0.25), (12, 12)])
def test_durations(text: object, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds)


@pytest.mark.parametrize("text", ["30", "30 minutes", "-1s", "0s", True, "1d"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
