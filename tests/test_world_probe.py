"""The world probe (issue 14): its arithmetic by hand, and one run on the smoke world."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from gramlib.experiments.world_probe import (PROBE_KEYS, ProbeConfig, bar_intervals, bars, bars_per_seed, probe_config,
                                             run_probe, shot_overlap, stratified_interval, summarise)
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
