"""The feature-shift lens on finished runs (gramlib.reporting.restore_analysis, the suite's feature_shift flag):
discrepancies and averages against hand computations, and a real smoke experiment that measures them."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from gramlib.compute import LOCAL
from gramlib.config import load_params
from gramlib.restore import shift_discrepancy
from gramlib.reporting.restore_analysis import (claim_check, method_summary, rank_correlation, shift_vs_accuracy,
                                      unit_discrepancy)
from gramlib.experiments.suite import Experiment, read_shifts, run_experiment, shifts_path, suite_config


def _shift_rows(method, seed, dataset, vision, text):
    rows = [{"protocol": "base2new", "dataset": dataset, "method": method, "seed": seed, "shots": 16,
             "split": "new", "tower": "vision", "layer": i, "norm": v} for i, v in enumerate(vision)]
    rows += [{"protocol": "base2new", "dataset": dataset, "method": method, "seed": seed, "shots": 16,
              "split": "new", "tower": "text", "layer": i, "norm": t} for i, t in enumerate(text)]
    return rows


def _acc_rows(method, seed, dataset, base, new, epoch=10):
    return [{"protocol": "base2new", "dataset": dataset, "method": method, "seed": seed, "shots": 16,
             "epoch": epoch, "split": s, "accuracy": a} for s, a in (("base", base), ("new", new))]


def test_shift_discrepancy_by_hand():
    # blocks paired from the input: (1-2)^2 and (2-0)^2 over 2 paired blocks; vision blocks 3-4 unpaired
    assert shift_discrepancy(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 0.0])) == pytest.approx(2.5)
    assert shift_discrepancy(torch.zeros(4), torch.zeros(2)) == 0.0  # zero-shot CLIP
    assert shift_discrepancy(torch.tensor([3.0, 1.0]), torch.tensor([3.0, 1.0])) == 0.0


def test_unit_discrepancy_and_method_averages_by_hand():
    shifts = pd.DataFrame(
        _shift_rows("A", 1, "d1", [1, 2, 9], [3, 2]) + _shift_rows("A", 2, "d1", [0, 0, 0], [2, 2])
        + _shift_rows("A", 1, "d2", [1, 1, 1], [1, 1]) + _shift_rows("A", 2, "d2", [1, 1, 1], [1, 3])
        + _shift_rows("B", 1, "d1", [0, 0, 0], [0, 0]) + _shift_rows("B", 2, "d1", [0, 0, 0], [0, 0])
        + _shift_rows("B", 1, "d3", [5, 5, 5], [0, 0]))  # d3: B only, dropped from the averages
    d = unit_discrepancy(shifts).set_index(["method", "seed", "dataset"])
    assert d.loc[("A", 1, "d1"), "discrepancy"] == pytest.approx(((1 - 3) ** 2 + 0) / 2)
    assert d.loc[("A", 1, "d1"), "shift_vision"] == 12 and d.loc[("A", 1, "d1"), "shift_text"] == 5
    rows = pd.DataFrame(_acc_rows("A", 1, "d1", 80, 60) + _acc_rows("A", 1, "d1", 99, 99, epoch=3)
                        + _acc_rows("A", 2, "d1", 70, 50) + _acc_rows("A", 1, "d2", 90, 70)
                        + _acc_rows("A", 2, "d2", 60, 40) + _acc_rows("B", 1, "d1", 50, 55)
                        + _acc_rows("B", 2, "d1", 52, 57) + _acc_rows("B", 1, "d3", 10, 10))
    per_seed = shift_vs_accuracy(shifts, rows, ["A", "B"]).set_index(["method", "seed"])
    assert set(per_seed["n_datasets"]) == {1}  # only d1 is shared by A and B
    assert per_seed.loc[("A", 1), "new"] == 60 and per_seed.loc[("A", 2), "discrepancy"] == pytest.approx(4.0)
    summary = method_summary(per_seed.reset_index()).set_index("method")
    assert summary.loc["A", "new_mean"] == 55 and summary.loc["A", "new_std"] == pytest.approx(np.std([60, 50], ddof=1))
    assert summary.loc["A", "discrepancy_mean"] == pytest.approx((2.0 + 4.0) / 2)
    assert summary.loc["B", "discrepancy_mean"] == 0 and summary.loc["B", "n_seeds"] == 2
    with pytest.raises(ValueError, match="C"):
        shift_vs_accuracy(shifts, rows, ["A", "C"])


def test_rank_correlation_and_claim_check():
    s = pd.DataFrame({"method": list("abcd"), "discrepancy_mean": [0, 1, 2, 3], "new_mean": [70, 60, 50, 40]})
    assert rank_correlation(s)["spearman"] == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(s.head(2))["spearman"])
    table = pd.DataFrame({"dataset": "Average", "method": ["M", "M", "R", "R"], "metric": ["new", "H"] * 2,
                          "mean": [60.0, 70.0, 63.0, 69.0], "std": np.nan, "n_seeds": 3})
    check = claim_check(table, [("M", "R", "new", +1), ("M", "R", "H", +1), ("M", "X", "H", +1)])
    assert list(check["ours"]) == pytest.approx([3.0, -1.0]) and list(check["same_direction"]) == [True, False]


def test_experiment_config_rejects_shift_on_transfer():
    with pytest.raises(ValueError, match="feature_shift"):
        Experiment("x", "transfer", 4, ("CoOp",), (1,), feature_shift=True)
    with pytest.raises(ValueError, match="shift_images"):
        Experiment("x", "base2new", 4, ("CoOp",), (1,), feature_shift=True, shift_images=0)


def test_suite_measures_feature_shifts_of_each_unit(smoke, tmp_path):
    """A real smoke experiment: zero-shot CLIP has no shift, CoOp shifts the text tower only, VPT the
    image tower only, IVLP both; the rows resume with their units."""
    params = copy.deepcopy(load_params())
    cfg = suite_config("smoke", params)
    ds = smoke.datasets[1]
    exp = Experiment("lens", "base2new", 2, ("CLIP", "CoOp", "VPT", "IVLP"), (1,), epochs=2, datasets=(ds,),
                     feature_shift=True, shift_images=8)
    cfg = dataclasses.replace(cfg, experiments={"lens": exp})
    out = tmp_path / "lens.csv"
    run_experiment(smoke, cfg, "lens", out, compute=LOCAL, progress=None)
    sh = read_shifts(out)
    assert set(sh["method"]) == {"CLIP", "CoOp", "VPT", "IVLP"} and set(sh["split"]) == {"new"}
    assert set(sh["n_images"]) == {8}
    tot = sh.groupby(["method", "tower"])["norm"].sum()
    assert tot["CLIP"].eq(0).all()
    assert tot[("CoOp", "vision")] == 0 and tot[("CoOp", "text")] > 0
    assert tot[("VPT", "text")] == 0 and tot[("VPT", "vision")] > 0
    assert tot[("IVLP", "vision")] > 0 and tot[("IVLP", "text")] > 0
    n = len(sh)
    run_experiment(smoke, cfg, "lens", out, compute=LOCAL, progress=None)  # nothing to run, nothing duplicated
    assert len(read_shifts(out)) == n
    # an experiment without the flag still leaves a (header-only) shifts file for DVC
    plain = dataclasses.replace(exp, name="plain", methods=("CLIP",), feature_shift=False)
    cfg2 = dataclasses.replace(cfg, experiments={"plain": plain})
    run_experiment(smoke, cfg2, "plain", tmp_path / "plain.csv", compute=LOCAL, progress=None)
    assert shifts_path(tmp_path / "plain.csv").exists() and read_shifts(tmp_path / "plain.csv").empty
