"""Across-seed summaries for results tables: a t interval of a mean, and a paired comparison of two arms.

Seeds are the replicates: each seed trains one model per arm, so arms compared on the same seeds are paired (the same
data split, initialisation seed and training order), and the paired difference removes what the seed shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and the half-width of its two-sided ``level`` t interval (``nan`` when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """The interval lies on one side of 0 (an effect larger than its uncertainty)."""
        return abs(self.mean) > self.half_width


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} s / sqrt(n), s the sample standard deviation (n - 1 in its denominator)."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, math.nan, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class Paired:
    """``a - b`` over paired values: the mean difference with its t interval, and the two-sided p of the paired t test
    (H0: mean difference 0). ``shown``: the interval excludes 0."""

    difference: Interval
    t: float
    p: float

    @property
    def shown(self) -> bool:
        return self.difference.excludes_zero


def paired_comparison(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Paired:
    """Student's paired t test on d_i = a_i - b_i: t = mean(d) / (s_d / sqrt(n)) on n - 1 degrees of freedom."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    difference = t_interval([x - y for x, y in zip(a, b, strict=True)], level)
    if difference.n < 2:
        return Paired(difference, math.nan, math.nan)
    result = stats.ttest_rel(a, b)
    return Paired(difference, float(result.statistic), float(result.pvalue))
