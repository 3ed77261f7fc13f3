"""Paired statistics for comparing an arm with the baseline: McNemar per seed, paired t over seeds, TOST.

- :func:`mcnemar` compares two classifiers on the same test reviews (one pair of runs with the same seed):
  only the discordant reviews count, b (A right, B wrong) and c (A wrong, B right).  With fewer than
  :data:`EXACT_BELOW` discordant reviews the exact two-sided binomial test (b ~ Binomial(b + c, ½)) is
  used, otherwise the χ² statistic with continuity correction (|b − c| − 1)² / (b + c).
- :func:`paired_t` tests the mean of per-seed differences (arm − baseline) against 0 (Student's t, n − 1 df).
- :func:`tost` is the two one-sided tests of equivalence (Schuirmann 1987) of the per-seed differences
  within ±``margin``: equivalent when both H0: μ ≤ −margin and H0: μ ≥ +margin are rejected, i.e. when
  p = max(p_lower, p_upper) < α — equivalently, when the (1 − 2α) confidence interval of μ lies inside the margin.

Accuracies are fractions, so the protocol's ±0.5 points is ``margin=0.005``.

Power (how many seeds a comparison needs), from the spread of the per-seed differences actually seen:

- :func:`paired_t_power` is the exact power of the two-sided paired t-test against a true mean difference
  (noncentral t with n − 1 df and noncentrality δ·√n/σ).
- :func:`tost_power` is the power of TOST to show equivalence within ±margin when the true difference is
  ``true_difference``. It uses the usual approximation P(reject lower) + P(reject upper) − 1 (each a
  noncentral t), which never overstates the power.
- :func:`minimum_detectable_difference` and :func:`seeds_needed` invert them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

#: discordant counts below this use the exact binomial test
EXACT_BELOW = 25
ALPHA = 0.05
#: the protocol's equivalence margin: ±0.5 accuracy points
TOST_MARGIN = 0.005
#: the power seed counts are planned for
POWER = 0.8
#: the most seeds :func:`seeds_needed` considers
MAX_SEEDS = 1000


@dataclass(frozen=True)
class McNemar:
    b: int  # first right, second wrong
    c: int  # first wrong, second right
    statistic: float | None  # χ² with continuity correction (None for the exact test)
    p_value: float
    method: str  # "exact" or "chi2"
    n: int  # reviews compared

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """McNemar's test of two classifiers' correctness on the same reviews (same order)."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise ValueError(f"mcnemar needs two 1-D arrays of the same length, got shapes {a.shape} and {b_.shape}")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    discordant = b + c
    if discordant == 0:
        return McNemar(b, c, None, 1.0, "exact", len(a))
    if discordant < EXACT_BELOW:
        p = float(stats.binomtest(b, discordant, 0.5, alternative="two-sided").pvalue)
        return McNemar(b, c, None, min(1.0, p), "exact", len(a))
    statistic = (abs(b - c) - 1) ** 2 / discordant
    return McNemar(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)), "chi2", len(a))


@dataclass(frozen=True)
class PairedT:
    n: int
    mean_difference: float
    std_difference: float | None
    t: float | None
    p_value: float | None
    ci95: tuple[float, float] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.shape != second.shape or first.ndim != 1 or len(first) == 0:
        raise ValueError(f"paired tests need two equally long, non-empty 1-D sequences; got {first.shape}, "
                         f"{second.shape}")  # fmt: skip
    return first - second


def paired_t(a: Sequence[float], b: Sequence[float]) -> PairedT:
    """Paired t-test of mean(a − b) = 0 over seeds (two-sided), with the 95% confidence interval of the mean."""
    d = _differences(a, b)
    n, mean = len(d), float(d.mean())
    if n < 2:
        return PairedT(n, mean, None, None, None, None)
    std = float(d.std(ddof=1))
    if std == 0:
        p = 1.0 if mean == 0 else 0.0
        return PairedT(n, mean, 0.0, None if mean == 0 else math.copysign(math.inf, mean), p, (mean, mean))
    result = stats.ttest_rel(a, b)
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return PairedT(n, mean, std, float(result.statistic), float(result.pvalue), (mean - half, mean + half))


@dataclass(frozen=True)
class Tost:
    n: int
    margin: float
    mean_difference: float
    p_lower: float | None  # H0: μ <= −margin
    p_upper: float | None  # H0: μ >= +margin
    p_value: float | None  # max of the two
    equivalent: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tost(a: Sequence[float], b: Sequence[float], margin: float = TOST_MARGIN, alpha: float = ALPHA) -> Tost:
    """Paired TOST: is mean(a − b) within ±``margin``? (needs ≥ 2 pairs; never equivalent with fewer)."""
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be > 0, got {margin!r}")
    d = _differences(a, b)
    n, mean = len(d), float(d.mean())
    if n < 2:
        return Tost(n, margin, mean, None, None, None, False)
    std = float(d.std(ddof=1))
    if std == 0:
        inside = -margin < mean < margin
        p_lower, p_upper = (0.0 if mean > -margin else 1.0), (0.0 if mean < margin else 1.0)
        return Tost(n, margin, mean, p_lower, p_upper, max(p_lower, p_upper), inside)
    p_lower = float(stats.ttest_1samp(d, -margin, alternative="greater").pvalue)
    p_upper = float(stats.ttest_1samp(d, margin, alternative="less").pvalue)
    p = max(p_lower, p_upper)
    return Tost(n, margin, mean, p_lower, p_upper, p, p < alpha)


def verdict(t: PairedT, equivalence: Tost, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` (paired t significant), else ``equivalent`` (TOST), else ``inconclusive``."""
    if t.p_value is not None and t.p_value < alpha and t.mean_difference != 0:
        return "better" if t.mean_difference > 0 else "worse"
    if equivalence.equivalent:
        return "equivalent"
    return "inconclusive"


def paired_t_power(difference: float, std: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs whose differences have SD ``std``, when the true mean
    difference is ``difference``."""
    if n < 2 or not std > 0:
        raise ValueError(f"power needs n >= 2 pairs and a spread > 0; got n={n}, std={std}")
    df, noncentrality = n - 1, difference * math.sqrt(n) / std
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def tost_power(std: float, n: int, margin: float = TOST_MARGIN, true_difference: float = 0.0,
               alpha: float = ALPHA) -> float:  # fmt: skip
    """Power of paired TOST within ±``margin`` (each one-sided test at ``alpha``) when the true mean difference is
    ``true_difference``: P(reject μ ≤ −margin) + P(reject μ ≥ +margin) − 1, at least 0."""
    if n < 2 or not std > 0:
        raise ValueError(f"power needs n >= 2 pairs and a spread > 0; got n={n}, std={std}")
    df, scale = n - 1, std / math.sqrt(n)
    critical = stats.t.ppf(1 - alpha, df)
    lower = stats.nct.sf(critical, df, (true_difference + margin) / scale)
    upper = stats.nct.cdf(-critical, df, (true_difference - margin) / scale)
    return float(max(0.0, lower + upper - 1))


def minimum_detectable_difference(std: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true mean difference that the paired t-test with ``n`` pairs detects with ``power``."""
    low, high = 0.0, std
    while paired_t_power(high, std, n, alpha) < power:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if paired_t_power(middle, std, n, alpha) < power else (low, middle)
    return high


def seeds_needed(power_at, power: float = POWER) -> int | None:
    """The fewest pairs n ≥ 2 with ``power_at(n) >= power`` (power grows with n), or None beyond MAX_SEEDS."""
    if power_at(MAX_SEEDS) < power:
        return None
    low, high = 2, MAX_SEEDS
    if power_at(low) >= power:
        return low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if power_at(middle) < power else (low, middle)
    return high


def power_analysis(std: float | None, n: int, same: float, margin: float = TOST_MARGIN,
                   power: float = POWER, alpha: float = ALPHA) -> dict[str, Any] | None:  # fmt: skip
    """What ``n`` paired seeds with per-seed differences of SD ``std`` can show, and the seeds the protocol's
    questions need: detecting a difference of ``same`` (e.g. its ±0.3 points) and showing equivalence within
    ±``margin`` when there is no true difference. None without a spread to plan from (fewer than 2 pairs)."""
    if std is None or not std > 0 or n < 2:
        return None
    return {
        "seeds": n, "std_difference": std, "power": power, "alpha": alpha,
        "minimum_detectable_difference": minimum_detectable_difference(std, n, power, alpha),
        "difference_asked": same,
        "seeds_to_detect": seeds_needed(lambda k: paired_t_power(same, std, k, alpha), power),
        "margin": margin,
        "seeds_for_equivalence": seeds_needed(lambda k: tost_power(std, k, margin, 0.0, alpha), power),
    }  # fmt: skip


@dataclass(frozen=True)
class MedianInterval:
    """A median with its distribution-free confidence interval (order statistics); bounds None when there are
    too few values for the asked confidence (fewer than 6 for 95%)."""

    median: float
    low: float | None
    high: float | None
    confidence: float | None  # the interval's exact coverage, at least the asked one
    n: int


def median_interval(values: Sequence[float], confidence: float = 0.95) -> MedianInterval:
    """The median of ``values`` and the interval [x₍ⱼ₎, x₍ₙ₊₁₋ⱼ₎] of the sorted values with the largest j whose
    coverage 1 − 2·P(Binomial(n, ½) ≤ j − 1) is still ≥ ``confidence``: it assumes nothing about the values'
    distribution, which for timings (skewed, with outliers from a shared host) is the point."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0 or x.ndim != 1:
        raise ValueError(f"median_interval needs a non-empty 1-D sequence, got shape {x.shape}")
    median = float(np.median(x))
    best = None
    for j in range(1, n // 2 + 1):
        coverage = 1.0 - 2.0 * float(stats.binom.cdf(j - 1, n, 0.5))
        if coverage < confidence:
            break
        best = (j, coverage)
    if best is None:
        return MedianInterval(median, None, None, None, n)
    j, coverage = best
    return MedianInterval(median, float(x[j - 1]), float(x[n - j]), coverage, n)
