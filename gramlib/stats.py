"""Intervals and paired tests: what a difference must clear before a report calls it a result.

The experiments' independent units are data seeds (and, for a table's average, (dataset, seed) pairs;
for the regulator's effect, held-out tasks).  Two methods run on the same units are compared *paired*:
the difference is taken per unit, and its Student-t interval and a sign-flip permutation test are
computed over units.  A difference whose interval holds 0 is "not resolved at this size", whatever its
mean; the guide's rule, and the reason two machines never disagree about a verdict they both resolve.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

AGREES, OPPOSITE, UNRESOLVED, NO_PAPER = "agrees", "opposite", "not resolved at this size", "no paper number"


def t_half_width(std: float, n: int, level: float = 0.95) -> float:
    """Half the width of the Student-t interval of a mean of ``n`` values with sample std ``std``."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def mean_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval of the mean of independent ``values``."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean()) if x.size else math.nan
    h = t_half_width(float(x.std(ddof=1)) if x.size > 1 else math.nan, x.size, level)
    return m, m - h, m + h


def paired_interval(a: Any, b: Any, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean paired difference b - a (units are the independent samples)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    _, lo, hi = mean_interval(d, level)
    return lo, hi


def paired_permutation_p(a: Any, b: Any, n_resamples: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of "mean(b - a) = 0" by flipping the sign of each unit's difference
    (exact when 2^n <= ``n_resamples``, else a seeded Monte Carlo draw: the same p on every machine)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size < 2:
        return math.nan
    if np.allclose(d, 0.0):
        return 1.0
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                                 alternative="two-sided", random_state=np.random.default_rng(seed))
    return float(res.pvalue)


def resolved(lo: float, hi: float, p: float | None = None, level: float = 0.95) -> bool:
    """A difference is resolved when its t-interval excludes 0 *and*, where given, the permutation
    p-value is below 1 - ``level``: with three units the t-interval can exclude 0 while no sign-flip
    test can (its smallest p is 2/8), and then the honest answer is "not at this size"."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0.0 <= hi:
        return False
    return p is None or (math.isfinite(p) and p < 1.0 - level)


def verdict(lo: float, hi: float, paper: float | None, p: float | None = None, level: float = 0.95) -> str:
    """Our difference (interval, p-value) against the paper's difference: agrees, opposite or not resolved."""
    if paper is None or not math.isfinite(paper):
        return NO_PAPER
    if not resolved(lo, hi, p, level):
        return UNRESOLVED
    ours = 1.0 if lo > 0 else -1.0
    if paper == 0.0:
        return OPPOSITE  # the paper reports no change, we resolve one
    return AGREES if ours == math.copysign(1.0, paper) else OPPOSITE


__all__ = ["AGREES", "NO_PAPER", "OPPOSITE", "UNRESOLVED", "mean_interval", "paired_interval",
           "paired_permutation_p", "resolved", "t_half_width", "verdict"]
