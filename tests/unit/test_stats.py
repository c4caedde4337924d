"""The regression tests on constructed score pairs: noise passes, real drops fail."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from pytest_disteval.items.thresholds import Score
from pytest_disteval.regression import stats
from pytest_disteval.regression.items import compare
from pytest_disteval.suite.model import Tolerance

N = 200


def score(value: float, stderr: float | None, *, metric: str = "acc,none", n: int = N,
          hib: bool | None = True) -> Score:
    return Score("task", metric, value, stderr, n, hib)


def binary_se(p: float, n: int = N) -> float:
    # lm-eval's stderr of a mean of 0/1 values (sample standard deviation / sqrt(n))
    return math.sqrt(p * (1 - p) / (n - 1))


def samples(values: list[float], *, metric: str = "acc,none",
            hashes: list[str] | None = None) -> dict[str, Any]:
    n = len(values)
    return {"doc_id": list(range(n)), "doc_hash": hashes or [f"h{i}" for i in range(n)],
            "metrics": {metric: values}, "target": [str(i) for i in range(n)],
            "response": {"none": [f"r{i}" for i in range(n)]}}


def flipped(base: list[float], worse: int, better: int = 0) -> list[float]:
    """``base`` with the first ``worse`` correct documents wrong, ``better`` wrong ones right."""
    new = list(base)
    right = [i for i, v in enumerate(base) if v == 1][:worse]
    wrong = [i for i, v in enumerate(base) if v == 0][:better]
    for i in right:
        new[i] = 0
    for i in wrong:
        new[i] = 1
    return new


# -- known values -------------------------------------------------------------------


def test_p_values_match_hand_computed_values() -> None:
    assert stats.binomial_sf_half(8, 10) == pytest.approx(56 / 1024)  # C(10,8)+C(10,9)+1
    assert stats.binomial_sf_half(10, 10) == 2 ** -10
    assert stats.binomial_sf_half(0, 10) == 1.0
    assert stats.mcnemar(7, 2).p_value == pytest.approx(46 / 512)
    assert stats.normal_sf(1.959964) == pytest.approx(0.025, abs=1e-6)
    assert stats.normal_sf(0.0) == 0.5
    assert stats.student_t_sf(2.228139, 10) == pytest.approx(0.025, abs=1e-6)  # t table
    assert stats.student_t_sf(-2.228139, 10) == pytest.approx(0.975, abs=1e-6)
    assert stats.student_t_sf(1.0, 1) == pytest.approx(0.25)  # Cauchy: 1/2 - atan(1)/pi


def test_p_values_match_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 5), (3, 5), (60, 100), (550, 1000), (5100, 10_000)):
        assert stats.binomial_sf_half(k, n) == pytest.approx(
            float(scipy_stats.binom.sf(k - 1, n, 0.5)), rel=1e-9, abs=1e-300)
    for t, df in ((0.3, 3), (2.5, 7), (-1.2, 30), (4.0, 150), (1.7, 2000)):
        assert stats.student_t_sf(t, df) == pytest.approx(float(scipy_stats.t.sf(t, df)),
                                                          rel=1e-7)
    rng = random.Random(7)
    base = [rng.random() for _ in range(40)]
    new = [b - 0.02 + rng.gauss(0, 0.05) for b in base]
    expected = scipy_stats.ttest_rel(base, new, alternative="greater")
    got = stats.paired_t(base, new)
    assert got.statistic == pytest.approx(float(expected.statistic))
    assert got.p_value == pytest.approx(float(expected.pvalue))


# -- the z-test -------------------------------------------------------------------------


def test_a_drop_within_noise_passes_the_z_test() -> None:
    result = compare(score(0.80, binary_se(0.80)), score(0.78, binary_se(0.78)), alpha=0.05)
    assert result.passed and result.test == "z"
    assert 0.2 < result.p_value < 0.5
    assert result.worse_by == pytest.approx(0.02)
    assert result.lines[0] == "worse by 0.0200, within noise"


def test_a_drop_beyond_noise_fails_the_z_test() -> None:
    result = compare(score(0.80, binary_se(0.80)), score(0.70, binary_se(0.70)), alpha=0.05)
    assert not result.passed and result.test == "z"
    assert result.p_value < 0.05
    assert result.lines[0] == "regressed by 0.1000, beyond noise"
    assert any(line.startswith("test: z-test") for line in result.lines)


def test_alpha_decides_a_borderline_drop() -> None:
    base, now = score(0.80, binary_se(0.80)), score(0.73, binary_se(0.73))
    p = compare(base, now, alpha=0.05).p_value
    assert 0.01 < p < 0.05
    assert not compare(base, now, alpha=0.05).passed
    assert compare(base, now, alpha=0.01).passed


def test_an_improvement_never_fails() -> None:
    result = compare(score(0.70, 0.0), score(0.90, 0.0), alpha=0.05)
    assert result.passed and result.p_value == 1.0 and result.delta == pytest.approx(0.2)


# -- paired tests -------------------------------------------------------------------------


def test_the_paired_test_detects_a_small_consistent_drop_the_z_test_misses() -> None:
    base = [1.0] * 160 + [0.0] * 40
    new = flipped(base, worse=10)  # 0.80 -> 0.75 on the same 200 documents, all one way
    b, x = score(0.80, binary_se(0.80)), score(0.75, binary_se(0.75))
    unpaired = compare(b, x, alpha=0.05)
    paired = compare(b, x, alpha=0.05, baseline_samples=samples(base), samples=samples(new))
    assert unpaired.passed and unpaired.p_value > 0.05
    assert not paired.passed and paired.test == "mcnemar"
    assert paired.p_value == pytest.approx(2 ** -10)
    assert paired.pairing is not None
    assert (paired.pairing.n_worse, paired.pairing.n_better) == (10, 0)
    assert "documents flipped: 10 better->worse, 0 worse->better" in paired.lines
    examples = [line for line in paired.lines if line.startswith("  got worse: doc ")]
    assert examples == ["  got worse: doc 0: target '0', baseline 'r0', now 'r0'",
                        "  got worse: doc 1: target '1', baseline 'r1', now 'r1'",
                        "  got worse: doc 2: target '2', baseline 'r2', now 'r2'"]


def test_flips_both_ways_within_noise_pass_mcnemar() -> None:
    base = [1.0] * 160 + [0.0] * 40
    new = flipped(base, worse=6, better=4)
    result = compare(score(0.80, binary_se(0.80)), score(0.79, binary_se(0.79)), alpha=0.05,
                     baseline_samples=samples(base), samples=samples(new))
    assert result.passed and result.test == "mcnemar"
    assert result.p_value == pytest.approx(386 / 1024)  # P(X >= 6), X ~ Bin(10, 1/2)
    assert "documents flipped: 6 better->worse, 4 worse->better" in result.lines


def test_no_discordant_pairs_is_no_change() -> None:
    base = [1.0] * 100 + [0.0] * 100
    result = compare(score(0.5, binary_se(0.5)), score(0.5, binary_se(0.5)), alpha=0.05,
                     baseline_samples=samples(base), samples=samples(list(base)))
    assert result.passed and result.test == "mcnemar" and result.p_value == 1.0
    assert "documents flipped: 0 better->worse, 0 worse->better" in result.lines


def test_a_continuous_metric_gets_a_paired_t_test() -> None:
    rng = random.Random(3)
    base = [rng.uniform(0.2, 0.9) for _ in range(100)]
    new = [b - 0.01 + rng.gauss(0, 0.005) for b in base]  # a small, consistent drop
    se_b = math.sqrt(sum((v - sum(base) / 100) ** 2 for v in base) / 99 / 100)
    b = score(sum(base) / 100, se_b, metric="f1,none")
    x = score(sum(new) / 100, se_b, metric="f1,none")
    assert compare(b, x, alpha=0.05).passed  # the z-test sees a drop far inside the spread
    paired = compare(b, x, alpha=0.05, baseline_samples=samples(base, metric="f1,none"),
                     samples=samples(new, metric="f1,none"))
    assert not paired.passed and paired.test == "paired-t" and paired.p_value < 1e-6
    assert paired.pairing is not None and not paired.pairing.binary


def test_the_paired_t_test_uses_the_normal_tail_for_many_documents() -> None:
    rng = random.Random(5)
    base = [rng.random() for _ in range(stats.LARGE_N + 50)]
    new = [b + rng.gauss(0, 0.1) for b in base]
    result = stats.paired_t(base, new)
    assert result.p_value == pytest.approx(stats.normal_sf(result.statistic))


# -- direction and tolerances ----------------------------------------------------------


def test_a_lower_is_better_metric_regresses_upward() -> None:
    base = score(10.0, 0.1, metric="perplexity,none", hib=False)
    worse = compare(base, score(10.5, 0.1, metric="perplexity,none", hib=False), alpha=0.05)
    better = compare(base, score(9.0, 0.1, metric="perplexity,none", hib=False), alpha=0.05)
    assert not worse.passed and worse.worse_by == pytest.approx(0.5)
    assert better.passed and better.worse_by == pytest.approx(-1.0)
    assert "(lower is better)" in worse.lines[1]


def test_lower_is_better_flips_count_a_rise_as_worse() -> None:
    base = [0.0] * 200  # e.g. an error indicator per document
    new = [1.0] * 12 + [0.0] * 188
    result = compare(score(0.0, 0.0, metric="err,none", hib=False),
                     score(0.06, binary_se(0.06), metric="err,none", hib=False), alpha=0.05,
                     baseline_samples=samples(base, metric="err,none"),
                     samples=samples(new, metric="err,none"))
    assert not result.passed and result.pairing is not None
    assert (result.pairing.n_worse, result.pairing.n_better) == (12, 0)


def test_a_drop_within_the_absolute_tolerance_never_fails() -> None:
    base, now = score(0.80, 0.0), score(0.79, 0.0)  # no noise: the drop is certain
    assert not compare(base, now, alpha=0.05).passed
    allowed = compare(base, now, alpha=0.05, tolerance=Tolerance(abs=0.01))
    assert allowed.passed and allowed.lines[0] == "worse by 0.0100, within the tolerance"
    assert not compare(base, score(0.78, 0.0), alpha=0.05, tolerance=Tolerance(abs=0.01)).passed


def test_a_relative_tolerance_is_a_fraction_of_the_baseline() -> None:
    base = score(0.50, 0.0)
    assert compare(base, score(0.49, 0.0), alpha=0.05, tolerance=Tolerance(rel=0.02)).passed
    assert not compare(base, score(0.48, 0.0), alpha=0.05, tolerance=Tolerance(rel=0.02)).passed
    # with both, the more lenient applies
    assert Tolerance(abs=0.01, rel=0.05).allowed(0.5) == pytest.approx(0.025)


def test_a_tolerance_applies_to_the_paired_test_too() -> None:
    base = [1.0] * 160 + [0.0] * 40
    new = flipped(base, worse=10)
    result = compare(score(0.80, binary_se(0.80)), score(0.75, binary_se(0.75)), alpha=0.05,
                     tolerance=Tolerance(abs=0.05), baseline_samples=samples(base),
                     samples=samples(new))
    assert result.passed and result.test == "mcnemar" and result.p_value < 0.05


# -- edge cases ---------------------------------------------------------------------------


def test_zero_stderr_on_both_sides() -> None:
    assert compare(score(1.0, 0.0), score(1.0, 0.0), alpha=0.05).passed
    result = compare(score(1.0, 0.0), score(0.995, 0.0), alpha=0.05)
    assert not result.passed and result.p_value == 0.0


def test_stderr_not_available_counts_as_zero_and_says_so() -> None:
    result = compare(score(0.8, None), score(0.79, binary_se(0.79)), alpha=0.05)
    assert result.test == "z" and result.passed  # the new side's noise still counts
    assert any("stderr N/A (baseline)" in line for line in result.lines)
    assert not compare(score(0.8, None), score(0.7, None), alpha=0.05).passed


def test_different_documents_fall_back_to_the_z_test() -> None:
    base = [1.0] * 160 + [0.0] * 40
    fewer = samples(flipped(base, worse=10)[:150])
    result = compare(score(0.80, binary_se(0.80)), score(0.75, binary_se(0.75, 150), n=150),
                     alpha=0.05, baseline_samples=samples(base), samples=fewer)
    assert result.test == "z" and result.passed
    assert any("different documents (150 matched by doc id and hash, of 200 in the baseline "
               "and 150 now)" in line for line in result.lines)


def test_a_changed_document_hash_is_another_document() -> None:
    base = [1.0] * 160 + [0.0] * 40
    hashes = [f"h{i}" for i in range(200)]
    hashes[5] = "changed"
    result = compare(score(0.80, binary_se(0.80)), score(0.75, binary_se(0.75)), alpha=0.05,
                     baseline_samples=samples(base),
                     samples=samples(flipped(base, worse=10), hashes=hashes))
    assert result.test == "z"
    assert any("199 matched" in line for line in result.lines)


def test_documents_in_another_order_still_pair() -> None:
    base = [1.0] * 160 + [0.0] * 40
    new = flipped(base, worse=10)
    shuffled = samples(new)
    order = list(range(200))[::-1]
    for key in ("doc_id", "doc_hash", "target"):
        shuffled[key] = [shuffled[key][i] for i in order]
    shuffled["metrics"]["acc,none"] = [new[i] for i in order]
    shuffled["response"]["none"] = [shuffled["response"]["none"][i] for i in order]
    result = compare(score(0.80, binary_se(0.80)), score(0.75, binary_se(0.75)), alpha=0.05,
                     baseline_samples=samples(base), samples=shuffled)
    assert result.test == "mcnemar" and result.pairing is not None
    assert result.pairing.n_worse == 10


def test_a_metric_without_per_document_values_uses_the_z_test() -> None:
    result = compare(score(0.8, binary_se(0.8), metric="bleu,none"),
                     score(0.7, binary_se(0.7), metric="bleu,none"), alpha=0.05,
                     baseline_samples=samples([1.0] * 200), samples=samples([1.0] * 200))
    assert result.test == "z" and not result.passed
    assert any("has no per-document values of 'bleu,none'" in line for line in result.lines)


def test_a_nan_score_fails() -> None:
    result = compare(score(0.8, 0.01), score(math.nan, 0.01), alpha=0.05)
    assert not result.passed and "the score is NaN" in result.lines


def test_paired_t_edge_cases() -> None:
    assert stats.paired_t([], []).p_value == 1.0
    assert stats.paired_t([1.0, 1.0], [0.5, 0.5]).p_value == 0.0  # one shift, no noise
    assert stats.paired_t([1.0, 1.0], [1.0, 1.0]).p_value == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_t([1.0], [1.0, 2.0])


def test_malformed_per_document_results_fall_back_to_the_z_test() -> None:
    broken = samples([1.0] * 200)
    broken["doc_hash"] = broken["doc_hash"][:10]  # a hand-edited or truncated baseline
    result = compare(score(0.8, binary_se(0.8)), score(0.7, binary_se(0.7)), alpha=0.05,
                     baseline_samples=broken, samples=samples([1.0] * 200))
    assert result.test == "z" and not result.passed
    assert any("of the baseline are malformed" in line for line in result.lines)
