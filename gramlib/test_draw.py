"""The draw of test images: how far another test set of the same distribution would move a reported number.

A table's seeds redraw the few-shot training images; every seed is scored on the *same* test images. So the
spread across seeds cannot see the test set's own sampling error, which at 50 images per class is larger
than the seeds' for most differences the tables report (measured on the mini world with four independent
test sets, notes/issue14_progress.md, 2026-12-06). Every evaluated test split is therefore also scored on
TEST_FOLDS class-stratified folds (a class's i-th test image in fold i mod TEST_FOLDS): each fold is a
smaller draw of the same test distribution, with every class in it, and the full set's value is the mean of
the fold values, so var_k(fold value) / TEST_FOLDS estimates the test-draw variance of the full set's value
(TEST_FOLDS - 1 degrees of freedom). It adds to the seeds' variance of the mean: the two are independent
draws (the seeds' spread holds a little of each seed's test noise too, so the sum errs on the wide side).

Kept apart from :mod:`gramlib.stats`, which is part of the meta-training runs' code fingerprint: an edit
there retrains every run; nothing here is used by meta-training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

TEST_FOLDS = 5
FOLD_COLUMNS = tuple(f"acc_fold{k}" for k in range(TEST_FOLDS))  # protocols.COLUMNS: a row's fold accuracies


def fold_ids(labels: Sequence[int], k: int = TEST_FOLDS) -> np.ndarray:
    """Each image's fold: its rank among its class's images (in the split's order) mod ``k``."""
    seen: dict[int, int] = {}
    out = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        r = seen.get(int(lab), 0)
        seen[int(lab)] = r + 1
        out[i] = r % k
    return out


def fold_accuracies(hits: Sequence[bool], labels: Sequence[int], n_classes: int, k: int = TEST_FOLDS) -> list[float]:
    """Top-1 accuracy in percent on each of the ``k`` folds of a test split, given per-image ``hits``.

    NaN for every fold unless each of the ``n_classes`` classes has ``k`` test images or more (the
    paper_fixture's stand-ins have 2): a fold without some class is no draw of the same test distribution."""
    hits = np.asarray(hits, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes) if labels.size else np.zeros(n_classes, dtype=np.int64)
    if len(counts) != n_classes or n_classes == 0 or counts.min() < k:
        return [math.nan] * k
    ids = fold_ids(labels.tolist(), k)
    return [100.0 * float(hits[ids == f].mean()) for f in range(k)]


def fold_variance(fold_values: Any) -> tuple[float, float]:
    """(variance, degrees of freedom) of the mean of the full test set, from its ``k`` fold values
    (already averaged over seeds): var_k / k with k - 1 degrees of freedom; NaN with a NaN fold."""
    x = np.asarray(fold_values, dtype=float)
    if x.size < 2 or np.isnan(x).any():
        return math.nan, math.nan
    return float(x.var(ddof=1)) / x.size, float(x.size - 1)


def average_fold_variance(per_stratum: Iterable[Any]) -> tuple[float, float]:
    """(variance, df) of an average over fixed strata (datasets) of independent fold-measured means: each
    stratum's :func:`fold_variance` summed and divided by the number of strata squared, with
    Welch-Satterthwaite degrees of freedom."""
    parts = [fold_variance(v) for v in per_stratum]
    if not parts:
        return math.nan, math.nan
    n = len(parts)
    return combine([(v / n ** 2, df) for v, df in parts])


def combine(parts: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Independent errors given as (variance, df): their summed variance and its Welch-Satterthwaite degrees
    of freedom; NaN if any part is NaN; an exact zero part adds nothing."""
    parts = list(parts)
    if not parts or any(math.isnan(v) or math.isnan(df) for v, df in parts):
        return math.nan, math.nan
    total = sum(v for v, _ in parts)
    if total == 0.0:
        return 0.0, math.inf
    return total, total ** 2 / sum(v ** 2 / df for v, df in parts if v > 0.0)


def with_test_draw(seeds: tuple[float, float], test: tuple[float, float]) -> tuple[float, float]:
    """The seeds' (variance, df) with the test draw's added where it is known (:func:`combine`), else alone:
    a split without folds keeps the interval it would have had without them."""
    return combine([seeds, test]) if not math.isnan(test[0]) else seeds


def t_interval(mean: float, variance: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """mean ± t_df · sqrt(variance); NaN bounds with a NaN variance, the mean itself with zero variance."""
    from scipy import stats

    if math.isnan(variance) or math.isnan(df):
        return math.nan, math.nan
    if variance == 0.0:
        return mean, mean
    h = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(variance)
    return mean - h, mean + h


def mean_variance(values: Any) -> tuple[float, float]:
    """(variance of the mean, df) of independent ``values`` (data seeds): s^2 / n, n - 1; NaN with one value."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    return float(x.var(ddof=1)) / x.size, float(x.size - 1)


__all__ = ["FOLD_COLUMNS", "TEST_FOLDS", "average_fold_variance", "combine", "fold_accuracies", "fold_ids",
           "fold_variance", "mean_variance", "t_interval", "with_test_draw"]
