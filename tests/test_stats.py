"""Paired statistics: McNemar (exact and χ²), paired t, TOST — against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qra.experiment.stats import (
    POWER,
    mcnemar,
    median_interval,
    paired_t,
    paired_t_power,
    power_analysis,
    seeds_needed,
    tost,
    tost_power,
    verdict,
)


def correctness(b: int, c: int, both: int = 5, neither: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two correctness vectors with b reviews only A got right and c only B got right."""
    a = [True] * b + [False] * c + [True] * both + [False] * neither
    other = [False] * b + [True] * c + [True] * both + [False] * neither
    return np.array(a), np.array(other)


def test_mcnemar_exact_for_few_discordant_reviews():
    result = mcnemar(*correctness(3, 1))
    assert (result.b, result.c, result.method, result.n) == (3, 1, "exact", 11)
    assert result.p_value == pytest.approx(2 * (1 + 4) / 16)  # 2·P(X ≤ 1), X ~ Binomial(4, ½) = 0.625
    assert mcnemar(*correctness(0, 0)).p_value == 1.0
    assert mcnemar(*correctness(6, 0)).p_value == pytest.approx(2 / 64)


def test_mcnemar_chi2_with_continuity_correction_for_many():
    result = mcnemar(*correctness(30, 10))
    assert result.method == "chi2"
    assert result.statistic == pytest.approx((20 - 1) ** 2 / 40)  # 9.025
    assert result.p_value == pytest.approx(stats.chi2.sf(9.025, 1))
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))  # χ²(1) tail by hand


def test_mcnemar_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="same length"):
        mcnemar([True, False], [True])


def test_paired_t_matches_scipy_and_hand_values():
    a, b = [0.92, 0.93, 0.925, 0.931, 0.927], [0.921, 0.925, 0.92, 0.926, 0.924]
    result = paired_t(a, b)
    reference = stats.ttest_rel(a, b)
    assert result.t == pytest.approx(reference.statistic) and result.p_value == pytest.approx(reference.pvalue)
    d = np.subtract(a, b)
    assert result.mean_difference == pytest.approx(d.mean())
    assert result.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(5)))
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert result.ci95 == pytest.approx((d.mean() - half, d.mean() + half))
    assert paired_t([0.9], [0.8]).p_value is None  # one seed: no test


def test_tost_equivalence_within_half_a_point():
    base = np.array([0.920, 0.925, 0.922, 0.927, 0.921])
    close = base + np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
    result = tost(close, base, margin=0.005)
    d = close - base
    se = d.std(ddof=1) / math.sqrt(5)
    assert result.p_lower == pytest.approx(stats.t.sf((d.mean() + 0.005) / se, 4))
    assert result.p_upper == pytest.approx(stats.t.cdf((d.mean() - 0.005) / se, 4))
    assert result.equivalent and result.p_value == max(result.p_lower, result.p_upper)
    far = base + np.array([0.01, 0.012, 0.009, 0.011, 0.010])
    assert not tost(far, base).equivalent
    assert not tost([0.9], [0.9]).equivalent  # one pair cannot show equivalence


def test_verdicts():
    base = np.array([0.920, 0.925, 0.922, 0.927, 0.921])
    better = base + np.array([0.010, 0.012, 0.009, 0.011, 0.010])
    assert verdict(paired_t(better, base), tost(better, base)) == "better"
    assert verdict(paired_t(base, better), tost(base, better)) == "worse"
    same = base + np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
    assert verdict(paired_t(same, base), tost(same, base)) == "equivalent"
    noisy = base + np.array([0.02, -0.02, 0.01, -0.015, 0.004])
    assert verdict(paired_t(noisy, base), tost(noisy, base)) == "inconclusive"


def simulated_differences(difference: float, std: float, n: int, draws: int) -> np.ndarray:
    """Seeded simulated experiments: ``draws`` rows of n per-seed differences ~ N(difference, std²)."""
    return np.random.default_rng(7).normal(difference, std, size=(draws, n))


def test_paired_t_power_is_the_t_tests_rejection_rate():
    # the textbook value: effect size 1 (difference = SD), 10 pairs, two-sided α 0.05 -> power 0.80
    assert paired_t_power(0.003, 0.003, 10) == pytest.approx(0.803, abs=0.002)
    for difference, n in ((0.002, 5), (0.004, 3), (0.0, 6)):
        samples = simulated_differences(difference, 0.003, n, 20000)
        rejected = float(np.mean(stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05))
        assert paired_t_power(difference, 0.003, n) == pytest.approx(rejected, abs=0.012)


def test_tost_power_never_overstates_the_rejection_rate():
    for difference, n in ((0.0, 4), (0.0, 8), (0.002, 8)):
        samples = simulated_differences(difference, 0.003, n, 3000)
        rejected = float(np.mean([tost(d, np.zeros_like(d), margin=0.005).equivalent for d in samples]))
        approximated = tost_power(0.003, n, 0.005, difference)
        assert approximated <= rejected + 0.02 and approximated == pytest.approx(rejected, abs=0.06)


def test_power_analysis_inverts_the_power_functions():
    std = 0.002
    found = power_analysis(std, 3, same=0.003)
    detectable = found["minimum_detectable_difference"]
    assert paired_t_power(detectable, std, 3) == pytest.approx(POWER, abs=1e-6)
    n = found["seeds_to_detect"]
    assert paired_t_power(0.003, std, n) >= POWER > paired_t_power(0.003, std, n - 1)
    m = found["seeds_for_equivalence"]
    assert tost_power(std, m, 0.005) >= POWER and (m == 2 or tost_power(std, m - 1, 0.005) < POWER)
    assert power_analysis(None, 3, 0.003) is None and power_analysis(0.002, 1, 0.003) is None
    assert seeds_needed(lambda k: 0.0) is None  # never reached within MAX_SEEDS


@pytest.mark.parametrize(("n", "ranks", "coverage"), [(6, (1, 6), 0.96875), (10, (2, 9), 0.978515625),
                                                      (20, (6, 15), 0.958610534668)])  # fmt: skip
def test_median_interval_takes_the_textbook_order_statistics(n, ranks, coverage):
    values = np.random.default_rng(n).permutation(np.arange(1.0, n + 1) ** 2)  # order must not matter
    interval = median_interval(values)
    assert (interval.low, interval.high) == (ranks[0] ** 2, ranks[1] ** 2)
    assert interval.median == float(np.median(values)) and interval.n == n
    assert interval.confidence == pytest.approx(coverage, abs=1e-9)
    # one rank further in would fall short of 95%
    assert 1 - 2 * stats.binom.cdf(ranks[0], n, 0.5) < 0.95


def test_median_interval_has_no_bounds_below_six_values_and_rejects_none():
    interval = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (interval.median, interval.low, interval.high, interval.confidence) == (3.0, None, None, None)
    with pytest.raises(ValueError, match="non-empty"):
        median_interval([])
