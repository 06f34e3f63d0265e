"""The draw of test images (gramlib.test_draw): folds and variances by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gramlib.test_draw import (TEST_FOLDS, average_fold_variance, combine, fold_accuracies, fold_ids, fold_variance,
                               mean_variance, t_interval)


def test_fold_ids_rank_images_within_their_class():
    # class 0 has 7 images, class 1 has 3, interleaved: class 0's i-th image goes to fold i mod 3
    labels = [0, 1, 0, 1, 0, 1, 0, 0, 0, 0]
    assert fold_ids(labels, 3).tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2, 0]


def test_fold_accuracies_by_hand():
    # two classes, 5 images each (one per fold); hits of class 0: 1,1,0,0,1; of class 1: 0,1,1,1,1
    labels = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    hits = [1, 1, 0, 0, 1, 0, 1, 1, 1, 1]
    folds = fold_accuracies(hits, labels, 2)
    assert folds == [50.0, 100.0, 50.0, 50.0, 100.0]
    assert np.mean(folds) == pytest.approx(100.0 * np.mean(hits))  # equal folds: their mean is the split's


def test_fold_accuracies_need_every_class_k_times():
    labels = [0] * 5 + [1] * 4  # class 1 one image short
    assert all(math.isnan(f) for f in fold_accuracies([1] * 9, labels, 2))
    assert all(math.isnan(f) for f in fold_accuracies([1] * 5, [0] * 5, 2))  # class 1 absent
    assert all(math.isnan(f) for f in fold_accuracies([], [], 3))
    assert len(fold_accuracies([1] * 5, [0] * 5, 1)) == TEST_FOLDS


def test_fold_variance_and_mean_variance():
    assert fold_variance([0.0, 1.0, 2.0, 3.0, 4.0]) == (pytest.approx(2.5 / 5), 4.0)
    assert all(math.isnan(v) for v in fold_variance([1.0, math.nan, 2.0]))
    assert mean_variance([1.0, 3.0]) == (pytest.approx(1.0), 1.0)
    assert all(math.isnan(v) for v in mean_variance([1.0]))


def test_combine_is_welch_satterthwaite():
    # 1 (1 df) + 1 (1 df) + 2 (4 df): total 4, df = 16 / (1 + 1 + 1) = 16 / 3
    assert combine([(1.0, 1.0), (1.0, 1.0), (2.0, 4.0)]) == (pytest.approx(4.0), pytest.approx(16.0 / 3.0))
    assert combine([(0.0, 1.0), (2.0, 4.0)]) == (pytest.approx(2.0), pytest.approx(4.0))  # a zero part adds nothing
    assert combine([(0.0, 2.0)]) == (0.0, math.inf)
    assert all(math.isnan(v) for v in combine([(1.0, 1.0), (math.nan, 1.0)]))


def test_average_fold_variance_over_datasets():
    # two datasets with fold variances 2.5/5 = 0.5 and 0 (4 df): the average's (0.5 + 0) / 4 = 0.125 with 4 df
    var, df = average_fold_variance([[0.0, 1.0, 2.0, 3.0, 4.0], [7.0] * 5])
    assert (var, df) == (pytest.approx(0.125), pytest.approx(4.0))


def test_t_interval_by_table():
    # t(0.975, 4) = 2.776445 (tables)
    lo, hi = t_interval(10.0, 4.0, 4.0)
    assert (lo, hi) == (pytest.approx(10.0 - 2 * 2.776445, abs=1e-5), pytest.approx(10.0 + 2 * 2.776445, abs=1e-5))
    assert t_interval(3.0, 0.0, math.inf) == (3.0, 3.0)
    assert all(math.isnan(v) for v in t_interval(3.0, math.nan, 4.0))
