"""The reducer sees each distinct caption embedding once and broadcasts back."""

import numpy as np
from sklearn.decomposition import PCA

from gramlib.chc.topics import SampledReducer, _distinct_rows


def test_distinct_rows_keeps_first_seen_order():
    X = np.array([[3, 4], [1, 2], [3, 4], [5, 6], [1, 2]], dtype=np.float32)
    unique, inverse = _distinct_rows(X)
    assert unique.tolist() == [[3, 4], [1, 2], [5, 6]]
    assert inverse.tolist() == [0, 1, 0, 2, 1]
    assert np.array_equal(unique[inverse], X)


def test_reducer_fits_distinct_rows_only():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 8)).astype(np.float32)
    X = base[rng.integers(0, 20, size=200)]  # 200 rows, 20 distinct
    red = SampledReducer(PCA(n_components=3, random_state=0))
    out = red.fit_transform(X)
    assert out.shape == (200, 3)
    # identical captions get identical coordinates, and they equal a fit on the distinct rows
    unique, inverse = _distinct_rows(X)
    ref = PCA(n_components=3, random_state=0).fit_transform(unique)
    np.testing.assert_allclose(out, ref[inverse], rtol=1e-5, atol=1e-5)
