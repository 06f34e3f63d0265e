"""The ablation at a glance (notebook 03): paired differences over (dataset, seed) units, by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gramlib.reporting.ablation_glance import ablation_glance, verdict


def _rows(acc: dict[str, dict[tuple[str, int], tuple[float, float]]]) -> pd.DataFrame:
    out = []
    for method, units in acc.items():
        for (dataset, seed), (base, new) in units.items():
            for split, a in (("base", base), ("new", new)):
                for epoch, shift in ((5, -10.0), (10, 0.0)):  # an earlier epoch that must be ignored
                    out.append({"protocol": "base2new", "dataset": dataset, "method": method, "seed": seed,
                                "shots": 16, "split": split, "epoch": epoch, "accuracy": a + shift})
    return pd.DataFrame(out)


def test_paired_difference_and_interval_by_hand():
    units = [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1), ("d2", 2), ("d2", 3)]
    ref = {u: (70.0 + i, 60.0 + 2 * i) for i, u in enumerate(units)}
    new_gain = [1.0, 3.0, 2.0, 2.0, 1.5, 2.5]  # new accuracy gains of "B" per unit
    b = {u: (ref[u][0], ref[u][1] + g) for u, g in zip(units, new_gain)}
    c = {u: (ref[u][0] - 0.5 + (0.2 if i % 2 else -0.2), ref[u][1]) for i, u in enumerate(units)}
    glance = ablation_glance(_rows({"A": ref, "B": b, "C": c}), ["A", "B", "C"], reference="A").set_index(["method", "metric"])

    d = np.array(new_gain)
    half = 2.570581835636314 * d.std(ddof=1) / math.sqrt(6)  # t_{0.975, 5}
    row = glance.loc[("B", "new")]
    assert row["delta"] == pytest.approx(2.0) and row["n_pairs"] == 6
    assert row["p_value"] == pytest.approx(2 / 64)  # all six gains positive: only the two one-sign flips
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert row["verdict"] == "higher" and row["mean"] == pytest.approx(np.mean([ref[u][1] for u in units]) + 2.0)
    # C: base 0.5 lower with a small spread, resolved as lower; its new accuracy is identical (interval 0)
    assert glance.loc[("C", "base"), "verdict"] == "lower"
    assert glance.loc[("C", "base"), "delta"] == pytest.approx(-0.5)
    # H of a unit is the harmonic mean of that unit's base and new
    h_ref = np.mean([2 * x * y / (x + y) for x, y in ref.values()])
    assert glance.loc[("A", "H"), "mean"] == pytest.approx(h_ref)
    assert glance.loc[("A", "H"), "verdict"] == "reference"


def test_verdict_and_missing_rows():
    assert verdict(0.1, 0.5) == "higher" and verdict(-0.5, -0.1) == "lower" and verdict(-0.1, 0.1) == "not resolved"
    assert verdict(0.1, 0.5, p=0.25) == "not resolved"  # three units: no sign-flip test can reach 5 %
    rows = _rows({"A": {("d", 1): (50.0, 50.0), ("d", 2): (51.0, 49.0)}})
    with pytest.raises(ValueError, match=r"no base-to-new rows for \['B'\]"):
        ablation_glance(rows, ["A", "B"], reference="A")


def test_the_interval_counts_the_draw_of_test_images_by_hand():
    from scipy import stats

    # B - A per fold (the same on both seeds): d1 0, 2, 4, 2, 2 (unit differences 2); d2 1 on every fold
    diffs = {"d1": [0.0, 2.0, 4.0, 2.0, 2.0], "d2": [1.0] * 5}
    out = []
    for method in ("A", "B"):
        for (dataset, f), seed in [(item, s) for item in diffs.items() for s in (1, 2)]:
            folds = [50.0 + (x if method == "B" else 0.0) for x in f]
            for split in ("base", "new"):
                out.append({"protocol": "base2new", "dataset": dataset, "method": method, "seed": seed, "shots": 16,
                            "split": split, "epoch": 10, "accuracy": float(np.mean(folds)),
                            **{f"acc_fold{k}": v for k, v in enumerate(folds)}})
    row = ablation_glance(pd.DataFrame(out), ["A", "B"], reference="A").set_index(["method", "metric"]).loc[("B", "new")]
    # units 2, 2, 1, 1: variance of the mean (1/3) / 4 (3 df); test draw: d1's fold variance 2 / 5, d2's 0,
    # averaged over 2 datasets: 0.4 / 4 = 0.1 (4 df); Welch-Satterthwaite over both
    var = 1 / 12 + 0.1
    df = var ** 2 / ((1 / 12) ** 2 / 3 + 0.1 ** 2 / 4)
    h = stats.t.ppf(0.975, df) * math.sqrt(var)
    assert row["delta"] == pytest.approx(1.5) and (row["ci_low"], row["ci_high"]) == pytest.approx((1.5 - h, 1.5 + h))
