"""The world probe (issue 14): its arithmetic by hand, and one run on the smoke world."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from gramlib.experiments.world_probe import (FOLD_KEYS, PROBE_KEYS, TEST_FOLDS, ProbeConfig, bar_intervals, bars,
                                             bars_per_seed, image_draw_variance, probe_config, run_probe,
                                             scores_by_split, shot_overlap, stratified_interval, summarise)
from gramlib.stats import mean_interval


def test_shot_overlap_counts_shared_images():
    assert shot_overlap({"a", "b", "c", "d"}, {"c", "d", "e", "f"}) == 0.5
    assert shot_overlap({"a"}, {"b"}) == 0.0
    with pytest.raises(ValueError, match="empty"):
        shot_overlap(set(), {"a"})


def test_summary_averages_seeds_then_datasets_and_bars_use_the_thresholds():
    keys = [k for k in PROBE_KEYS if k != "shot_overlap"]
    units = pd.DataFrame([{"dataset": "d1", "seed": 1, **{k: 60.0 for k in keys}},
                          {"dataset": "d1", "seed": 2, **{k: 70.0 for k in keys}},
                          {"dataset": "d2", "seed": 1, **{k: 40.0 for k in keys}}])
    per, avg = summarise(units, {"d1": 0.2, "d2": 0.4})
    assert per.set_index("dataset").loc["d1", "zs_base"] == 65.0
    assert avg["zs_base"] == pytest.approx((65.0 + 40.0) / 2) and avg["shot_overlap"] == pytest.approx(0.3)
    avg = {**{k: 0.0 for k in PROBE_KEYS}, "zs_base": 60.0, "coop10_base": 66.0, "zs_new": 70.0, "coop10_new": 69.0,
           "coop50_new": 67.5, "shot_overlap": 0.3}
    b = bars(avg)
    assert b["coop10_base_gain_ge_5"] == {"rule": "coop10_base - zs_base >= 5", "value": 6.0, "threshold": 5.0,
                                          "met": True}
    assert b["coop10_new_le_zs_new"]["met"] and not b["coop50_new_drop_ge_2"]["met"]
    assert b["coop50_new_drop_ge_2"]["value"] == pytest.approx(1.5)
    assert not b["shot_overlap_le_0.25"]["met"]
    # every rule, read as text and evaluated on the averages, gives the bar's value and verdict
    for name, bar in b.items():
        lhs, rhs = bar["rule"].split(" >= ")
        left, right = (x.strip() for x in lhs.split(" - "))
        value = (float(left) if left[0].isdigit() else avg[left]) - avg[right]
        assert bar["value"] == pytest.approx(value) and bar["threshold"] == float(rhs), name
        assert bar["met"] == (value >= float(rhs)), name


def test_bars_per_seed_are_each_seeds_dataset_means():
    keys = [k for k in PROBE_KEYS if k != "shot_overlap"]
    base = {k: 50.0 for k in keys}
    units = pd.DataFrame([{"dataset": "d1", "seed": 1, **base, "coop10_base": 58.0, "coop50_new": 47.0},
                          {"dataset": "d2", "seed": 1, **base, "coop10_base": 54.0, "coop50_new": 49.0},
                          {"dataset": "d1", "seed": 2, **base, "coop10_base": 52.0, "coop50_new": 50.5},
                          {"dataset": "d2", "seed": 2, **base, "coop10_base": 50.0, "coop50_new": 49.5}])
    per = bars_per_seed(units, {"d1": 0.2, "d2": 0.2})
    # seed 1: base gain (58 + 54) / 2 - 50 = 6, decay 50 - 48 = 2; seed 2: gain 1, decay 0
    assert per["coop10_base_gain_ge_5"] == {"1": pytest.approx(6.0), "2": pytest.approx(1.0)}
    assert per["coop50_new_drop_ge_2"] == {"1": pytest.approx(2.0), "2": pytest.approx(0.0)}
    assert per["shot_overlap_le_0.25"] == {"1": pytest.approx(0.05), "2": pytest.approx(0.05)}


def test_stratified_interval_counts_only_the_spread_within_strata():
    # strata A = [1, 3], B = [5, 7]: means 2 and 6 (their gap is no noise), each mean's variance 2 / 2 = 1;
    # se = sqrt(1 + 1) / 2 = 0.70711, Welch-Satterthwaite df = (1 + 1)^2 / (1 / 1 + 1 / 1) = 2,
    # t(0.975, 2) = 4.302653 (tables) -> half width 3.04243 around the mean 4
    m, lo, hi = stratified_interval([1.0, 3.0, 5.0, 7.0], ["A", "A", "B", "B"])
    assert m == pytest.approx(4.0)
    assert (lo, hi) == (pytest.approx(4.0 - 3.04243, abs=1e-4), pytest.approx(4.0 + 3.04243, abs=1e-4))
    # the same four values as one sample: the 4-point gap between strata widens the interval
    _, lo1, hi1 = mean_interval([1.0, 3.0, 5.0, 7.0])
    assert hi1 - lo1 > hi - lo
    # strata that agree within themselves: zero width, whatever their means
    assert stratified_interval([1.0, 1.0, 9.0, 9.0], ["A", "A", "B", "B"]) == (5.0, 5.0, 5.0)
    # a stratum with one value has no spread to estimate
    m, lo, hi = stratified_interval([1.0, 3.0, 5.0], ["A", "A", "B"])
    assert m == pytest.approx(3.5) and math.isnan(lo) and math.isnan(hi)


def test_bar_intervals_count_the_seed_spread_within_each_dataset():
    keys = [k for k in PROBE_KEYS if k != "shot_overlap"]
    base = {k: 50.0 for k in keys}
    # 10 -> 50 epoch drops: d0 = [1, 3] (seeds 1, 2), d1 = [2, 4]; mean 2.5; each dataset mean's variance
    # 2 / 2 = 1, se = sqrt(2) / 2, Welch-Satterthwaite df 2, t(0.975, 2) = 4.302653 (tables) -> +- 3.04243
    drops = [1.0, 2.0, 3.0, 4.0]
    units = pd.DataFrame([{"dataset": f"d{i % 2}", "seed": 1 + i // 2, **base, "coop10_base": 60.0 + i,
                           "coop50_new": 50.0 - d} for i, d in enumerate(drops)])
    ci = bar_intervals(units)
    assert ci["coop50_new_drop_ge_2"]["ci_low"] == pytest.approx(2.5 - 3.04243, abs=1e-4)
    assert ci["coop50_new_drop_ge_2"]["ci_high"] == pytest.approx(2.5 + 3.04243, abs=1e-4)
    assert ci["coop50_new_drop_ge_2"]["verdict"] == "not resolved at this size"  # [-0.54, 5.54] holds 2
    # base gains d0 = [10, 12], d1 = [11, 13]: 11.5 +- 3.04, wholly above 5 -> met; new unchanged: zero width
    assert ci["coop10_base_gain_ge_5"]["verdict"] == "met" and ci["coop10_base_gain_ge_5"]["n_seeds"] == 2
    assert ci["coop10_new_le_zs_new"]["ci_low"] == ci["coop10_new_le_zs_new"]["ci_high"] == 0.0
    assert ci["coop10_new_le_zs_new"]["verdict"] == "met"
    # drops lowered by 6 (-5, -4, -3, -2): -3.5 +- 3.04, wholly below 2 -> missed
    units["coop50_new"] += 6.0
    assert bar_intervals(units)["coop50_new_drop_ge_2"]["verdict"] == "missed"
    assert "shot_overlap_le_0.25" not in ci  # a count of shared files, not a sample


def test_scores_by_split_reads_each_rows_folds_at_one_epoch():
    row = {"epoch": 10, "split": "base", "accuracy": 60.0, **{f"acc_fold{k}": 50.0 + k for k in range(TEST_FOLDS)}}
    old = {**row, "epoch": 5, "accuracy": 1.0}
    out = scores_by_split([old, row, {**row, "split": "train", "accuracy": 90.0}], 10)
    assert out["base"] == 60.0 and out["train"] == 90.0 and out["base_fold3"] == 53.0
    assert set(out) == {"base", "train", *[f"{s}_fold{k}" for s in ("base", "train") for k in range(TEST_FOLDS)]}


def test_stratified_interval_adds_a_second_error_per_stratum():
    # strata A = [1, 3], B = [5, 7]: each mean's seed variance 1 (1 df); a test-draw variance of 1 (1 df) each:
    # se = sqrt(1 + 1 + 1 + 1) / 2 = 1, df = 4^2 / (1 + 1 + 1 + 1) = 4, t(0.975, 4) = 2.776445 (tables)
    m, lo, hi = stratified_interval([1.0, 3.0, 5.0, 7.0], ["A", "A", "B", "B"],
                                    extra={"A": (1.0, 1.0), "B": (1.0, 1.0)})
    assert (m, lo, hi) == (pytest.approx(4.0), pytest.approx(4.0 - 2.776445, abs=1e-5),
                           pytest.approx(4.0 + 2.776445, abs=1e-5))
    # strata that agree within themselves still carry the test draw: here 2 x 0.5 (8 df each) -> se sqrt(1) / 2,
    # df = 1 / (2 * 0.25 / 8) = 16, t(0.975, 16) = 2.119905 (tables)
    _, lo, hi = stratified_interval([1.0, 1.0, 9.0, 9.0], ["A", "A", "B", "B"],
                                    extra={"A": (0.5, 8.0), "B": (0.5, 8.0)})
    assert (lo, hi) == (pytest.approx(5.0 - 0.5 * 2.119905, abs=1e-5), pytest.approx(5.0 + 0.5 * 2.119905, abs=1e-5))


def _fold_units(fold_diffs: dict[int, list[float]]) -> pd.DataFrame:
    """One dataset, seeds 1 and 2, every key 50 except coop10_base (a base gain per fold and seed)."""
    rows = []
    for seed, diffs in fold_diffs.items():
        row = {"dataset": "d0", "seed": seed, **{k: 50.0 for k in PROBE_KEYS if k != "shot_overlap"}}
        row.update({f"{k}_fold{i}": 50.0 for k in FOLD_KEYS for i in range(TEST_FOLDS)})
        row.update({f"coop10_base_fold{i}": 50.0 + g for i, g in enumerate(diffs)})
        row["coop10_base"] = 50.0 + sum(diffs) / len(diffs)  # equal folds: the full set's is their mean
        rows.append(row)
    return pd.DataFrame(rows)


def test_image_draw_variance_is_the_spread_of_the_seed_averaged_folds():
    assert TEST_FOLDS == 5
    # seed-averaged base gain per fold: (0 + 0) / 2, (0 + 2) / 2, ... = [0, 1, 2, 3, 4]: variance 2.5 (ddof 1),
    # so the full set's mean has 2.5 / 5 = 0.5, with 4 df
    units = _fold_units({1: [0.0, 0.0, 2.0, 2.0, 4.0], 2: [0.0, 2.0, 2.0, 4.0, 4.0]})
    assert image_draw_variance(units, "coop10_base", "zs_base") == {"d0": (pytest.approx(0.5), 4.0)}
    ci = bar_intervals(units)["coop10_base_gain_ge_5"]
    # seeds: gains 1.6 and 2.4 -> seed variance of the mean 0.32 / 2 = 0.16 (1 df); test draw 0.5 (4 df):
    # se = sqrt(0.66) = 0.812404, df = 0.66^2 / (0.16^2 / 1 + 0.5^2 / 4) = 0.4356 / 0.0881 = 4.944381
    assert ci["se_seeds"] == pytest.approx(0.4) and ci["se_test_draw"] == pytest.approx(math.sqrt(0.5))
    from scipy import stats
    h = stats.t.ppf(0.975, 0.4356 / 0.0881) * math.sqrt(0.66)
    assert (ci["ci_low"], ci["ci_high"]) == (pytest.approx(2.0 - h), pytest.approx(2.0 + h))
    assert ci["test_folds"] == 5 and ci["verdict"] == "missed"  # 2.0 +- 2.09: wholly below 5
    # units without fold scores (an older probe): the seeds' interval alone, and no test-draw error
    plain = bar_intervals(units[[c for c in units if "_fold" not in c]])["coop10_base_gain_ge_5"]
    assert plain["test_folds"] == 0 and math.isnan(plain["se_test_draw"]) and plain["ci_high"] - plain["ci_low"] > 0
    # a dataset without folds (too few test images) among others: the seeds' interval alone, the same
    units.loc[0, "zs_base_fold3"] = float("nan")
    one_seed = bar_intervals(units[units["seed"] == 1])["coop10_base_gain_ge_5"]
    assert math.isnan(one_seed["se_seeds"]) and math.isnan(one_seed["ci_low"])  # no spread to estimate
    mixed = bar_intervals(units)["coop10_base_gain_ge_5"]
    assert math.isnan(mixed.pop("se_test_draw")) and mixed == {k: v for k, v in plain.items() if k != "se_test_draw"}


def test_probe_config_is_strict():
    assert probe_config("mini") == ProbeConfig()
    with pytest.raises(ValueError, match="short_epochs < long_epochs"):
        ProbeConfig(short_epochs=10, long_epochs=10)
    with pytest.raises(ValueError, match=r"probe.seeds has a seed twice: \[1, 2, 1\]"):
        ProbeConfig(seeds=(1, 2, 1))
    with pytest.raises(ValueError, match=r"probe: unknown key 'epoch'"):
        probe_config("mini", {"probe": {"epoch": 3}, "profiles": {"mini": {}}})


def test_probe_on_the_smoke_world(smoke, tmp_path):
    cfg = ProbeConfig(shots=2, seeds=(1, 2), short_epochs=2, long_epochs=3, datasets=("mini_glyphs_blueprint",))
    res = run_probe(smoke, cfg, tmp_path / "world_probe.json", threads=1)
    for k in PROBE_KEYS:
        assert k in res and not math.isnan(res[k]), k
    assert all(0.0 <= res[k] <= 100.0 for k in PROBE_KEYS if k != "shot_overlap")
    assert 0.0 <= res["shot_overlap"] <= 1.0
    assert set(res["bars"]) == {"coop10_base_gain_ge_5", "coop10_new_le_zs_new", "coop50_new_drop_ge_2",
                                "shot_overlap_le_0.25"}
    for name in ("coop10_base_gain_ge_5", "coop10_new_le_zs_new", "coop50_new_drop_ge_2"):
        b = res["bars"][name]
        assert b["n_seeds"] == 2 and b["ci_low"] <= b["value"] <= b["ci_high"], name
    assert [(u["dataset"], u["seed"]) for u in res["units"]] == [("mini_glyphs_blueprint", s) for s in (1, 2)]
    for u in res["units"]:  # every fold scored; equal folds (smoke: 25 test images a class, 5 in each fold)
        for k in FOLD_KEYS:
            folds = [u[f"{k}_fold{i}"] for i in range(TEST_FOLDS)]
            assert sum(folds) / TEST_FOLDS == pytest.approx(u[k], abs=1e-6), k
    for name in ("coop10_base_gain_ge_5", "coop10_new_le_zs_new", "coop50_new_drop_ge_2"):
        assert res["bars"][name]["test_folds"] == TEST_FOLDS and res["bars"][name]["se_test_draw"] >= 0.0
    assert set(res["bars_per_seed"]) == set(res["bars"]) and all(set(v) == {"1", "2"} for v in res["bars_per_seed"].values())
    per = pd.read_csv(tmp_path / "world_probe.csv")
    assert list(per["dataset"]) == ["mini_glyphs_blueprint"] and per.loc[0, "zs_base"] == pytest.approx(res["zs_base"], abs=1e-3)
    assert res["provenance"]["machine"]["cpu_count"] >= 1
    with pytest.raises(ValueError, match="not datasets of profile"):
        run_probe(smoke, ProbeConfig(datasets=("imagenet",)), tmp_path / "x.json")


def test_probe_cli_takes_other_seeds_only_with_an_output_of_its_own(capsys):
    from gramlib.cli import build_parser, main

    ap, _ = build_parser()
    assert ap.parse_args(["probe", "--profile", "smoke", "--seeds", "3,4,101", "--out", "x.json"]).seeds == (3, 4, 101)
    # the stage's output belongs to probe.seeds: refused before anything runs, naming the parameter
    assert main(["probe", "--profile", "smoke", "--seeds", "3,4"]) == 2
    assert "--seeds: give --out" in capsys.readouterr().err
