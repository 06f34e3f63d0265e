"""The linear probe (gramlib.experiments.linear_probe) against facts that do not depend on its code: points in
general position are linearly separable under any labelling when N <= D (Cover), far-apart
clusters are separated, and the cosine geometry ignores each feature vector's length."""

from __future__ import annotations

import numpy as np
import pytest

from gramlib.experiments.linear_probe import linear_probe


def test_any_labelling_of_few_points_in_high_dimension_is_fitted_exactly():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 64)), rng.integers(0, 3, size=30)  # random labels: nothing to generalise
    tx, ty = rng.normal(size=(600, 64)), rng.integers(0, 3, size=600)
    r = linear_probe(x, y, tx, ty, C=1e4)
    assert r.train_accuracy == 100.0
    assert 20.0 < r.test_accuracy < 47.0  # chance is 33 %: a perfect fit that means nothing
    assert (r.n_train, r.n_test, r.n_classes) == (30, 600, 3)


def test_separated_clusters_are_classified_and_row_scale_does_not_matter():
    rng = np.random.default_rng(1)
    centres = np.eye(8)[:4] * 5.0
    y, ty = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 10)
    x = centres[y] + rng.normal(scale=0.3, size=(80, 8))
    tx = centres[ty] + rng.normal(scale=0.3, size=(40, 8))
    r = linear_probe(x, y, tx, ty)
    assert r.train_accuracy == 100.0 and r.test_accuracy == 100.0
    scaled = linear_probe(x * rng.uniform(0.1, 10.0, size=(80, 1)), y, tx * 3.0, ty)
    assert scaled == r  # features are L2-normalised first, as CLIP compares them


@pytest.mark.parametrize("args, message", [
    ((np.zeros((4, 3)), np.array([0, 1, 0]), np.zeros((2, 3)), np.array([0, 1])), "train features"),
    ((np.ones((4, 3)), np.array([0, 1, 0, 1]), np.zeros((2, 5)), np.array([0, 1])), "test features"),
    ((np.ones((4, 3)), np.zeros(4, dtype=int), np.ones((2, 3)), np.array([0, 0])), "two classes"),
])
def test_bad_shapes_are_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        linear_probe(*args)


def test_base_class_probe_uses_the_suites_few_shot_base_split(smoke, tmp_path):
    from gramlib.data.coop import fewshot_split, load_dataset, subsample_dataset
    from gramlib.experiments.linear_probe import base_class_probe
    from gramlib.experiments.protocols import load_env

    env = load_env(smoke, feature_cache=tmp_path / "features")
    ds = smoke.datasets[1]
    r = base_class_probe(env, ds, 2, 1)
    base = subsample_dataset(fewshot_split(load_dataset(smoke.root / smoke.coop_dir, ds), 2, 1), "base")
    assert (r.n_train, r.n_test, r.n_classes) == (len(base.train), len(base.test), len(base.classnames))
    assert 0.0 <= r.test_accuracy <= 100.0 and 0.0 <= r.train_accuracy <= 100.0
