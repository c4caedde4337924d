"""Tests of "did the score get worse beyond noise": one-sided, pure, no scipy.

Every test here is one-sided in the direction of *worse* (a drop for a
higher-is-better metric, a rise for a lower-is-better one) and returns the
p-value of the observed change under "no change". The caller decides at its
alpha, after its tolerances.

- ``z_test``: two scores and their standard errors (what lm-eval reports);
  needs nothing per document, so it works for every metric and every pair of runs.
- ``mcnemar``: exact McNemar on the discordant pairs of a binary metric scored on
  the same documents: under "no change" a flip is equally likely either way, so
  the number of flips to worse is Binomial(flips, 1/2).
- ``paired_t``: a paired t-test on per-document differences of a continuous metric
  (the normal approximation above ``LARGE_N`` documents, where t and z agree to
  three decimals).

A paired test removes the between-document variance that the z-test must carry,
which is why it sees a small consistent drop the z-test calls noise at the same n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LARGE_N = 200  # documents above which paired_t uses the normal tail
EXACT_N = 2000  # discordant pairs up to which the binomial tail is summed in integers


@dataclass(frozen=True)
class TestResult:
    test: str  # "z", "mcnemar" or "paired-t"
    p_value: float  # one-sided: probability of a change at least this much worse
    statistic: float  # z, t, or the number of flips to worse
    worse_by: float  # how much worse the new score is (negative: better)

    __test__ = False  # not a pytest test class, whatever its name says


def worse_by(baseline: float, new: float, higher_is_better: bool) -> float:
    """How much worse ``new`` is than ``baseline``: positive is worse in either direction."""
    return baseline - new if higher_is_better else new - baseline


def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def z_test(baseline: float, baseline_stderr: float, new: float, new_stderr: float, *,
           higher_is_better: bool = True) -> TestResult:
    """Independent scores with standard errors: z = worse_by / sqrt(se_b^2 + se_n^2).

    With both stderrs 0 there is no noise to allow for: any change is certain
    (p = 0 when worse, 1 otherwise).
    """
    delta = worse_by(baseline, new, higher_is_better)
    se = math.sqrt(baseline_stderr ** 2 + new_stderr ** 2)
    if se == 0.0:
        return TestResult("z", 0.0 if delta > 0 else 1.0,
                          math.inf if delta > 0 else (-math.inf if delta < 0 else 0.0), delta)
    z = delta / se
    return TestResult("z", normal_sf(z), z, delta)


def binomial_sf_half(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2).

    Exact in integers up to ``EXACT_N`` trials (C(n, i) by the recurrence, one
    division at the end); above, the terms are summed in log space from the largest,
    which keeps about 12 significant digits and takes milliseconds for 10^5 flips.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if n <= EXACT_N:
        term = math.comb(n, k)
        tail = 0
        for i in range(k, n + 1):
            tail += term
            term = term * (n - i) // (i + 1)
        return tail / 2 ** n
    log_half = n * math.log(0.5)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half
            for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def mcnemar(flipped_worse: int, flipped_better: int) -> TestResult:
    """Exact one-sided McNemar: p = P(X >= flipped_worse), X ~ Bin(discordant, 1/2).

    With no discordant pairs the runs agree on every document: p = 1. ``worse_by``
    is the score change per document of the whole matched set only when the caller
    passes it; here it is the net flips (worse minus better).
    """
    n = flipped_worse + flipped_better
    p = binomial_sf_half(flipped_worse, n) if n else 1.0
    return TestResult("mcnemar", p, float(flipped_worse), float(flipped_worse - flipped_better))


def paired_t(baseline: Sequence[float], new: Sequence[float], *,
             higher_is_better: bool = True) -> TestResult:
    """Paired t-test on per-document values of the same documents, one-sided to worse."""
    if len(baseline) != len(new):
        raise ValueError(f"paired values differ in length: {len(baseline)} vs {len(new)}")
    n = len(baseline)
    diffs = [worse_by(b, x, higher_is_better) for b, x in zip(baseline, new, strict=True)]
    if n == 0:
        return TestResult("paired-t", 1.0, 0.0, 0.0)
    mean = math.fsum(diffs) / n
    if n < 2:
        return TestResult("paired-t", 0.0 if mean > 0 else 1.0, 0.0, mean)
    var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    if var == 0.0:
        # every document moved by the same amount: no noise, the change is certain
        return TestResult("paired-t", 0.0 if mean > 0 else 1.0,
                          math.inf if mean > 0 else (-math.inf if mean < 0 else 0.0), mean)
    t = mean / math.sqrt(var / n)
    p = normal_sf(t) if n > LARGE_N else student_t_sf(t, n - 1)
    return TestResult("paired-t", p, t, mean)


def student_t_sf(t: float, df: int) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * regularized_beta(x, df / 2.0, 0.5)  # P(|T| >= |t|) / 2
    return tail if t >= 0 else 1.0 - tail


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Numerical Recipes' betacf, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast only below the mean; use the symmetry above it
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return math.exp(log_front) * h / a
