"""Intervals, paired tests and verdicts, against computations written out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from gramlib.stats import AGREES, NO_PAPER, OPPOSITE, UNRESOLVED, mean_interval, paired_interval, paired_permutation_p, verdict


def test_t_interval_by_hand():
    x = [70.0, 72.0, 77.0]
    m = sum(x) / 3
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert mean_interval(x) == pytest.approx((m, m - half, m + half))
    assert paired_interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx((2.0 - 4.302652729911275 * 1.0 / math.sqrt(3),
                                                                               2.0 + 4.302652729911275 * 1.0 / math.sqrt(3)))
    assert all(math.isnan(v) for v in paired_interval([1.0], [2.0]))


def test_sign_flip_p_value_equals_full_enumeration():
    rng = np.random.default_rng(3)
    a = rng.normal(size=8)
    b = a + rng.normal(0.4, 1.0, size=8)
    d = b - a
    observed = abs(d.mean())
    flips = [abs(np.mean(d * np.array(s))) for s in itertools.product([1, -1], repeat=8)]
    exact = np.mean([f >= observed - 1e-12 for f in flips])
    assert paired_permutation_p(a, b) == pytest.approx(exact)
    assert paired_permutation_p(a, a) == 1.0


def test_verdicts():
    assert verdict(0.2, 1.0, 1.8) == AGREES
    assert verdict(-1.0, -0.2, 1.8) == OPPOSITE
    assert verdict(-0.2, 1.0, 1.8) == UNRESOLVED
    assert verdict(0.2, 1.0, None) == NO_PAPER and verdict(0.2, 1.0, float("nan")) == NO_PAPER
    assert verdict(float("nan"), float("nan"), 1.0) == UNRESOLVED
    # the interval alone excludes 0, but with 3 units the permutation test cannot (p >= 2/8): not resolved
    assert verdict(0.08, 0.34, 0.17, p=0.25) == UNRESOLVED and verdict(0.08, 0.34, 0.17, p=0.01) == AGREES


def test_table_intervals_and_direction_check_with_unit_rows():
    from gramlib.reporting.tables import base_to_new_table, describe_check, direction_check

    rows = []
    gains = {("d1", 1): 2.0, ("d1", 2): 3.0, ("d1", 3): 1.0, ("d2", 1): 2.5, ("d2", 2): 1.5, ("d2", 3): 2.0}
    for (ds, seed), gain in gains.items():
        for method, extra in (("CoOp", 0.0), ("CoOp+GRAM", gain)):
            for split, acc in (("base", 80.0 + seed), ("new", 60.0 + seed + extra)):
                rows.append({"protocol": "base2new", "dataset": ds, "method": method, "seed": seed, "shots": 16,
                             "epoch": 10, "split": split, "accuracy": acc})
    rows = pd.DataFrame(rows)
    table = base_to_new_table(rows)
    r = table[(table["dataset"] == "d1") & (table["method"] == "CoOp") & (table["metric"] == "base")].iloc[0]
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # base accuracies 81, 82, 83: std 1
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((82.0 - half, 82.0 + half))

    check = direction_check(table, 1, ["new"], rows=rows).set_index("pair")
    c = check.loc["CoOp+GRAM − CoOp"]
    d = np.array(list(gains.values()))
    h = 2.570581835636314 * d.std(ddof=1) / math.sqrt(6)  # t_{0.975, 5}
    assert c["n_units"] == 6 and (c["ci_low"], c["ci_high"]) == pytest.approx((d.mean() - h, d.mean() + h))
    assert c["verdict"] == AGREES  # the paper's Table 1: CoOp+GRAM gains on new classes
    assert c["p_value"] == pytest.approx(2 / 64)  # all six differences positive: only the two all-same-sign flips
    assert "agree with the paper" in describe_check(check.reset_index())
    assert c["unit_mean"] == pytest.approx(d.mean())  # base and new: the table's difference is the units' mean
    assert c["ours"] == pytest.approx(d.mean()) and "around the units' mean" not in describe_check(check.reset_index())

    # H: the table's difference is of harmonic means of averages, the interval is around the mean of per-unit H
    # differences; the check carries both and says which the interval is around
    hm = lambda b, n: 2 * b * n / (b + n)
    per_unit = np.array([hm(80.0 + s, 60.0 + s + g) - hm(80.0 + s, 60.0 + s) for (_, s), g in gains.items()])
    hc = direction_check(table, 1, ["H"], rows=rows).set_index("pair").loc["CoOp+GRAM − CoOp"]
    assert hc["unit_mean"] == pytest.approx(per_unit.mean())
    assert (hc["ci_low"] + hc["ci_high"]) / 2 == pytest.approx(per_unit.mean())
    assert abs(hc["ours"] - hc["unit_mean"]) > 1e-4
    assert f"around the units' mean {per_unit.mean():+.2f}" in describe_check(
        direction_check(table, 1, ["H"], rows=rows).assign(ours=per_unit.mean() + 0.5))
    no_rows = direction_check(table, 1, ["new"])
    assert no_rows.iloc[0]["verdict"].startswith("sign only") and "not a test" in describe_check(no_rows)


def test_shared_labels_by_hand():
    from gramlib.reporting.tables import shared_labels, shared_labels_markdown

    got = shared_labels(["letter a", "Hash_Sign", "tree"], {"t1": ["hash sign", "mug"], "t2": ["kite", "letter  A"],
                                                          "t3": ["umbrella"]})
    assert got == {"t1": ["hash sign"], "t2": ["letter  A"], "t3": []}
    assert "`t1`: 1 (hash sign)" in shared_labels_markdown(got, "src") and "t3" not in shared_labels_markdown(got, "src")
    assert shared_labels_markdown({"t3": []}, "src").startswith("No target shares a class name with the source `src`")


def _fold_rows(folds: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """Base-to-new rows of one dataset whose base and new accuracies both have the given fold scores."""
    rows = []
    for (method, seed), f in folds.items():
        for split in ("base", "new"):
            rows.append({"protocol": "base2new", "dataset": "d1", "method": method, "seed": seed, "shots": 16,
                         "epoch": 10, "split": split, "accuracy": float(np.mean(f)),
                         **{f"acc_fold{k}": v for k, v in enumerate(f)}})
    return pd.DataFrame(rows)


def test_table_rows_and_paired_checks_count_the_test_draw_by_hand():
    from scipy import stats

    from gramlib.reporting.tables import base_to_new_table, direction_check

    rows = _fold_rows({("CoOp", 1): [50, 55, 60, 65, 70], ("CoOp", 2): [52, 57, 62, 67, 72],
                       ("CoOp+GRAM", 1): [55, 58, 63, 68, 71], ("CoOp+GRAM", 2): [55, 61, 66, 71, 77]})
    table = base_to_new_table(rows).set_index(["dataset", "method", "metric"])
    # CoOp base: seeds 60, 62 -> variance of the mean 2 / 2 = 1 (1 df); seed-averaged folds 51, 56, 61, 66, 71 ->
    # variance 62.5 / 5 = 12.5 (4 df); Welch-Satterthwaite df = 13.5^2 / (1 / 1 + 12.5^2 / 4)
    r = table.loc[("d1", "CoOp", "base")]
    df = 13.5 ** 2 / (1.0 + 12.5 ** 2 / 4.0)
    h = stats.t.ppf(0.975, df) * math.sqrt(13.5)
    assert (r["se_seeds"], r["se_test_draw"], r["df"]) == pytest.approx((1.0, math.sqrt(12.5), df))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((61.0 - h, 61.0 + h))
    # one dataset: its Average is the same row
    assert table.loc[("Average", "CoOp", "base"), "ci_low"] == pytest.approx(61.0 - h)

    # CoOp+GRAM - CoOp per unit: 3, 4 -> mean 3.5, variance of the mean 0.5 / 2 = 0.25 (1 df); per fold, averaged
    # over seeds: 4, 3.5, 3.5, 3.5, 3 -> variance 0.125 / 5 = 0.025 (4 df)
    c = direction_check(base_to_new_table(rows), 1, ["new"], rows=rows).set_index("pair").loc["CoOp+GRAM − CoOp"]
    df = 0.275 ** 2 / (0.25 ** 2 / 1.0 + 0.025 ** 2 / 4.0)
    h = stats.t.ppf(0.975, df) * math.sqrt(0.275)
    assert (c["se_units"], c["se_test_draw"]) == pytest.approx((0.5, math.sqrt(0.025)))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((3.5 - h, 3.5 + h))

    # a split too small for folds (NaN fold scores): the seeds' interval alone, as without fold columns
    small = rows.assign(**{f"acc_fold{k}": np.nan for k in range(5)})
    r = base_to_new_table(small).set_index(["dataset", "method", "metric"]).loc[("d1", "CoOp", "base")]
    h = 12.706204736174704 * 1.0  # t(0.975, 1) * se 1
    assert math.isnan(r["se_test_draw"]) and (r["ci_low"], r["ci_high"]) == pytest.approx((61.0 - h, 61.0 + h))


def test_zero_shot_rows_get_the_test_draw_alone():
    # the same accuracy on every seed (zero-shot): no seed spread, but the test images are still one draw
    from gramlib.reporting.tables import base_to_new_table

    rows = _fold_rows({("CLIP", 1): [40, 50, 60, 50, 50], ("CLIP", 2): [40, 50, 60, 50, 50]})
    r = base_to_new_table(rows).set_index(["dataset", "method", "metric"]).loc[("d1", "CLIP", "new")]
    h = 2.7764451051977987 * math.sqrt(50.0 / 5)  # folds' variance 50 (ddof 1) / 5, t(0.975, 4)
    assert r["se_seeds"] == 0.0 and (r["ci_low"], r["ci_high"]) == pytest.approx((50.0 - h, 50.0 + h))


def test_transfer_average_counts_the_targets_test_draw_only():
    from scipy import stats

    from gramlib.reporting.tables import transfer_table

    folds = {"src": [0, 0, 0, 100, 100], "t1": [10, 20, 30, 40, 50], "t2": [30, 30, 30, 30, 30]}
    rows = pd.DataFrame([{"protocol": "cross_dataset", "dataset": d, "method": "CoOp", "seed": s, "shots": 16,
                          "epoch": 10, "split": "test", "accuracy": float(np.mean(f)),
                          **{f"acc_fold{k}": v for k, v in enumerate(f)}}
                         for d, f in folds.items() for s in (1, 2)])
    t = transfer_table(rows, "cross_dataset", 16, "src").set_index("dataset")
    # targets' fold variances: t1 250 / 5 = 50, t2 0 (4 df each); their average's (50 + 0) / 4 = 12.5, 4 df;
    # every seed the same (se_seeds 0), so the interval is the test draw's alone
    h = stats.t.ppf(0.975, 4) * math.sqrt(12.5)
    r = t.loc["Average"]
    assert r["mean"] == 30.0 and r["se_test_draw"] == pytest.approx(math.sqrt(12.5)) and r["df"] == pytest.approx(4.0)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((30.0 - h, 30.0 + h))
    assert t.loc["src", "se_test_draw"] == pytest.approx(math.sqrt(3000.0 / 5))  # folds 0,0,0,100,100: variance 3000


def test_a_method_run_on_fewer_datasets_keeps_its_test_draw():
    # CoOp ran on d1 and d2, CLIP on d1 only: CLIP's Average is d1's, with d1's test draw (not NaN from a d2 it never ran)
    from gramlib.reporting.tables import base_to_new_table

    rows = []
    for method, datasets in (("CoOp", ("d1", "d2")), ("CLIP", ("d1",))):
        for d in datasets:
            for seed in (1, 2):
                for split in ("base", "new"):
                    rows.append({"protocol": "base2new", "dataset": d, "method": method, "seed": seed, "shots": 16,
                                 "epoch": 10, "split": split, "accuracy": 50.0,
                                 **{f"acc_fold{k}": v for k, v in enumerate([40.0, 50.0, 50.0, 50.0, 60.0])}})
    t = base_to_new_table(pd.DataFrame(rows)).set_index(["dataset", "method", "metric"])
    assert t.loc[("Average", "CLIP", "new"), "se_test_draw"] == pytest.approx(math.sqrt(10.0))  # 50 / 5
    assert t.loc[("Average", "CoOp", "new"), "se_test_draw"] == pytest.approx(math.sqrt(20.0 / 4))  # (10 + 10) / 2^2
