"""The t interval and the paired t test of vae_experiments.stats, against hand-computed values and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from vae_experiments.stats import paired_comparison, t_interval

# t_{0.975, 2} in closed form (on 2 degrees of freedom the quantile of p is (2p - 1) / sqrt(2 p (1 - p))); t_{0.975, 4}
# from a table of Student's t
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
T975_DF4 = 2.7764451051977934


def test_t_interval_of_three_values_by_hand() -> None:
    # mean 2, s = 1, half-width t_{0.975,2} / sqrt(3)
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-12)
    assert not interval.excludes_zero  # 2 < 2.484: 0 is inside


def test_t_interval_matches_scipy_and_other_levels() -> None:
    values = [240.49, 240.63, 240.47, 240.55, 240.71]
    interval = t_interval(values)
    low, high = scipy_stats.t.interval(0.95, 4, loc=interval.mean, scale=scipy_stats.sem(values))
    assert interval.mean - interval.half_width == pytest.approx(low, rel=1e-12)
    assert interval.mean + interval.half_width == pytest.approx(high, rel=1e-12)
    assert interval.half_width == pytest.approx(T975_DF4 * scipy_stats.sem(values), rel=1e-12)
    assert t_interval(values, level=0.99).half_width > interval.half_width


def test_one_value_has_no_interval() -> None:
    interval = t_interval([5.0])
    assert interval.mean == 5.0 and math.isnan(interval.half_width) and not interval.excludes_zero
    with pytest.raises(ValueError):
        t_interval([])


def test_paired_comparison_by_hand() -> None:
    # d = (1, 2, 3): mean 2, s_d 1, t = 2 sqrt(3); on 2 degrees of freedom the two-sided p is 1 - t / sqrt(t^2 + 2)
    paired = paired_comparison([1.0, 2.0, 4.0], [0.0, 0.0, 1.0])
    t = 2 * math.sqrt(3)
    assert paired.t == pytest.approx(t, rel=1e-12)
    assert paired.p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert paired.difference.mean == 2.0
    assert paired.difference.half_width == pytest.approx(T975_DF2 / math.sqrt(3), rel=1e-12)
    assert not paired.shown  # 2 < 2.48: the interval contains 0, p > 0.05


def test_pairing_removes_the_shared_seed_effect() -> None:
    # a constant gap of 0.45 on top of a large seed effect: unpaired it would be lost, paired it is exact
    b = [240.5, 250.0, 235.0]
    a = [x + 0.45 + e for x, e in zip(b, (0.01, -0.02, 0.01), strict=True)]
    paired = paired_comparison(a, b)
    assert paired.difference.mean == pytest.approx(0.45, abs=1e-12)
    assert paired.shown and paired.p < 0.001
    assert paired.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    with pytest.raises(ValueError, match="equal counts"):
        paired_comparison([1.0, 2.0], [1.0])
