"""The experiment suite (gramlib.experiments.suite), the meta-run registry (gramlib.experiments.meta_runs), the table and
figure helpers and the reports index: configuration rules, resume, and numbers checked by hand."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gramlib.compute import LOCAL
from gramlib.config import load_params
from gramlib.reporting.figures import dataset_curves, epoch_curves, fit_room, grad_alignment, init_spread, turning_points
from gramlib.reporting.index import build_index
from gramlib.experiments.protocols import label_transfer
from gramlib.experiments.suite import (Experiment, MethodSpec, Unit, in_unit_order, run_experiment,
                                      suite_config, unit_runtime, units)
from gramlib.reporting.tables import TABLE_COLUMNS, describe_check, direction_check, save_table


@pytest.fixture
def params():
    return copy.deepcopy(load_params())


# ---- configuration ---------------------------------------------------------------------------------


def test_tables_rows_join_the_base2new_experiment(params):
    cfg = suite_config("mini", params)
    b2n = cfg.experiment("base2new")
    for t in ("table6", "table7"):
        assert set(cfg.tables[t]) <= set(b2n.methods)
    assert len(b2n.methods) == len(set(b2n.methods))  # rows shared by tables are run once
    # the mini profile hosts the ablations on CoOp+GRAM, the paper profile on UNIGRAM (as the paper)
    assert cfg.tables["table6"][0] == "CoOp+GRAM"
    assert suite_config("paper", params).tables["table6"][0] == "UNIGRAM"
    assert "CoCoOp" not in cfg.experiment("transfer16").methods
    assert "CoCoOp" in suite_config("paper", params).experiment("transfer16").methods


def test_seed_and_shot_overrides(params):
    cfg = suite_config("mini", params, seeds=[4, 5], shots=8)
    assert cfg.experiment("base2new").seeds == (4, 5) and cfg.experiment("base2new").shots == 8
    assert cfg.experiment("transfer4").shots == 4  # follow_shots: false
    assert cfg.experiment("init_spread").seeds == (1,)  # pinned


def test_train_split_scores_the_k_shot_training_images(smoke, tmp_path, params):
    """Figure 1b's fitting side: the base classes' K shots are scored every evaluated epoch, and
    evaluating them leaves the base/new rows exactly as a run without them."""
    from gramlib.data.coop import load_dataset

    cfg = suite_config("smoke", params)
    ds = smoke.datasets[1]
    plain = Experiment("plain", "base2new", 2, ("CoOp",), (1,), epochs=2, datasets=(ds,), curves=("CoOp",))
    fit = dataclasses.replace(plain, name="fit", train_split=True)
    cfg = dataclasses.replace(cfg, experiments={"plain": plain, "fit": fit})
    a = run_experiment(smoke, cfg, "plain", tmp_path / "a.csv", compute=LOCAL, progress=None)
    b = run_experiment(smoke, cfg, "fit", tmp_path / "b.csv", compute=LOCAL, progress=None)
    train = b[b["split"] == "train"]
    n_base = (len(load_dataset(smoke.root / smoke.coop_dir, ds).classnames) + 1) // 2  # CoOp's rule: ceil(C/2)
    assert sorted(train["epoch"]) == [1, 2] and set(train["n_test"]) == {2 * n_base}
    assert train["accuracy"].between(0, 100).all()
    key = ["split", "epoch", "accuracy"]
    pd.testing.assert_frame_equal(a[key].sort_values(key).reset_index(drop=True),
                                  b[b["split"] != "train"][key].sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["suite"]["experiments"]["base2new"]["methods"].append("NoSuchMethod"), "unknown methods"),
    (lambda p: p["suite"]["tables"].update(table6=["Nope"]), "suite.tables.table6"),
    (lambda p: p["suite"]["methods"].update(Bad={"learner": "coop", "meta": "coop_gram"}), "exactly one"),
    (lambda p: p["suite"]["methods"].update(Bad={"learner": "coop", "lr": 1}), "suite.methods.Bad: unknown key 'lr'"),
    (lambda p: p["suite"]["experiments"]["overfit"].update(protocol="sideways"), "protocol must be"),
    (lambda p: p["suite"]["experiments"]["transfer4"].update(train_split=True), "train_split"),
    (lambda p: p["suite"].update(augment="crop"), "suite.augment"),
    (lambda p: p["suite"].update(lr_translation="logit"), "suite.lr_translation"),
])
def test_bad_configuration_is_a_clear_error(params, mutate, message):
    mutate(params)
    with pytest.raises(ValueError, match=message):
        suite_config("paper", params)  # no profile overrides hide the base settings


def test_every_tuning_run_and_the_probe_use_the_suite_augmentation(smoke, tmp_path, params, monkeypatch):
    """CoCoOp's augmentation is the default training input (issue 14): the suite's runs and the world
    probe's CoOp receive suite.augment as their policy (and suite.lr_translation as their lr translation),
    and the augmented feature views are distinct."""
    from gramlib.experiments import protocols, world_probe
    from gramlib.tuning.inputs import view_bank

    assert suite_config("paper", params).augment == "aug:10"  # CoCoOp's crops (8-100 % of the area)
    assert suite_config("mini", params).augment == "aug:10:0.5"  # 32-pixel images: milder crops (params.yaml)
    seen = []
    real = protocols.run_unit

    def spy(*a, **kw):
        seen.append(kw.get("policy", "none"))
        if kw.get("train_set", a[5] if len(a) > 5 else None) is not None:
            translations.append(kw.get("lr_translation", "none"))
        return real(*a, **kw)

    translations: list[str] = []

    monkeypatch.setattr(protocols, "run_unit", spy)  # the suite and the probe import it at call time
    cfg = dataclasses.replace(suite_config("smoke", params), augment="aug:3", lr_translation="temperature")
    exp = Experiment("aug", "base2new", 1, ("CoOp", "VPT"), (1,), epochs=2, datasets=(smoke.datasets[1],))
    run_experiment(smoke, dataclasses.replace(cfg, experiments={"aug": exp}), "aug", tmp_path / "a.csv",
                   compute=LOCAL, progress=None)
    assert seen == ["aug:3", "aug:3"] and translations == ["temperature", "temperature"]
    seen.clear()
    translations.clear()
    params["profiles"]["smoke"]["suite"]["augment"] = "aug:2"
    params["profiles"]["smoke"]["suite"]["lr_translation"] = "temperature"
    params.setdefault("profiles", {}).setdefault("smoke", {}).setdefault("probe", {}).update(
        {"datasets": [smoke.datasets[1]], "seeds": [1], "short_epochs": 2, "long_epochs": 3, "shots": 1})
    world_probe.run_probe(smoke, world_probe.probe_config("smoke", params), tmp_path / "probe.json", params=params)
    assert seen and all(p == "aug:2" for p in seen if p != "none") and seen.count("aug:2") == 2  # CoOp short + long
    assert translations == ["temperature", "temperature"]
    # the views differ from each other and from the eval transform's
    env = protocols.load_env(smoke, feature_cache=tmp_path / "features")
    data = protocols.fewshot_dataset(env, smoke.datasets[1], 2, 1).train
    aug = view_bank(env.backbone, data, "aug:3", cache_dir=env.feature_cache, seed=1).views
    plain = view_bank(env.backbone, data, "none", cache_dir=env.feature_cache).views
    assert aug.shape[0] == 3 and not torch.allclose(aug[0], aug[1]) and not torch.allclose(aug[0], plain[0])


def test_units_and_transfer_labels(smoke):
    exp = Experiment("x", "base2new", 4, ("CoOp", "CLIP"), (1, 2))
    us = units(smoke, exp)
    assert len(us) == 2 * 2 * len(smoke.datasets) and len({u.key for u in us}) == len(us)
    t = units(smoke, Experiment("t", "transfer", 4, ("CoOp",), (1,)))
    assert [u.dataset for u in t] == [smoke.source]
    rows = [{"dataset": d, "accuracy": 1.0} for d in [smoke.source, smoke.variants[0], smoke.datasets[1]]]
    labelled = label_transfer(rows, smoke)
    assert [(r["dataset"], r["protocol"]) for r in labelled] == [
        (smoke.source, "cross_domain"), (smoke.source, "cross_dataset"),
        (smoke.variants[0], "cross_domain"), (smoke.datasets[1], "cross_dataset")]


def test_rows_are_read_in_unit_order_whatever_order_workers_finished(smoke):
    """Two workers append units as they finish: the tables must not depend on that timing."""
    exp = Experiment("x", "base2new", 4, ("CoOp", "CLIP"), (1, 2))
    us = units(smoke, exp)
    canonical = pd.DataFrame([{"method": u.method, "seed": u.seed, "dataset": u.dataset, "split": split, "accuracy": i + j / 10}
                              for i, u in enumerate(us) for j, split in enumerate(("base", "new"))])
    rng = np.random.default_rng(0)
    blocks = [canonical.iloc[2 * i:2 * i + 2] for i in rng.permutation(len(us))]  # whole units, shuffled
    shuffled = pd.concat(blocks, ignore_index=True)
    assert not shuffled.equals(canonical)
    pd.testing.assert_frame_equal(in_unit_order(shuffled, smoke, exp), canonical)
    xfer = Experiment("t", "transfer", 4, ("CoOp", "CLIP"), (2, 1))
    rows = pd.DataFrame({"method": ["CoOp", "CLIP", "CoOp", "CLIP"], "seed": [1, 1, 2, 2],
                         "dataset": [smoke.variants[0], smoke.source, smoke.source, smoke.variants[0]]})
    got = in_unit_order(rows, smoke, xfer)  # seed-major in the experiment's seed order; a unit's rows keep theirs
    assert list(zip(got["method"], got["seed"], got["dataset"])) == [
        ("CoOp", 2, smoke.source), ("CLIP", 2, smoke.variants[0]), ("CoOp", 1, smoke.variants[0]), ("CLIP", 1, smoke.source)]


def test_unit_runtime_counts_each_training_once():
    rows = pd.DataFrame([
        # a base-to-new unit per dataset: runtime at its last epoch
        {"protocol": "base2new", "method": "CoOp", "seed": 1, "shots": 16, "dataset": "a", "runtime_s": 1.0},
        {"protocol": "base2new", "method": "CoOp", "seed": 1, "shots": 16, "dataset": "a", "runtime_s": 3.0},
        {"protocol": "base2new", "method": "CoOp", "seed": 1, "shots": 16, "dataset": "b", "runtime_s": 2.0},
        # one transfer unit seen under both views and several targets
        *[{"protocol": p, "method": "VPT", "seed": 1, "shots": 4, "dataset": d, "runtime_s": 5.0}
          for p in ("cross_domain", "cross_dataset") for d in ("s", "t")],
    ])
    assert unit_runtime(rows) == pytest.approx(3.0 + 2.0 + 5.0)


# ---- running, resuming ----------------------------------------------------------------------------


def test_run_resumes_without_rerunning_finished_units(smoke, tmp_path, params):
    cfg = suite_config("smoke", params)
    exp = Experiment("tiny", "base2new", 2, ("CLIP", "CoOp"), (1,), epochs=2, datasets=(smoke.datasets[1],))
    cfg = dataclasses.replace(cfg, experiments={"tiny": exp})
    out = tmp_path / "tiny.csv"
    calls = []
    rows = run_experiment(smoke, cfg, "tiny", out, compute=LOCAL, progress=calls.append)
    assert set(rows["method"]) == {"CLIP", "CoOp"} and set(rows["split"]) == {"base", "new"}
    assert rows[rows["method"] == "CoOp"]["epoch"].max() == 2
    first = out.read_bytes()
    calls.clear()
    again = run_experiment(smoke, cfg, "tiny", out, compute=LOCAL, progress=calls.append)
    assert "0 units to run (2 done)" in calls[0] and out.read_bytes() == first
    assert len(again) == len(rows)
    # a CSV without its units file is from an unknown run: it is discarded, not trusted
    (tmp_path / "tiny.csv.units.json").unlink()
    calls.clear()
    run_experiment(smoke, cfg, "tiny", out, compute=LOCAL, progress=calls.append)
    assert "2 units to run (0 done)" in calls[0]


def test_rows_of_another_configuration_are_not_resumed(smoke, tmp_path, params):
    """The suite stages persist across `dvc repro` (a killed stage resumes), so the units file carries
    the experiment's fingerprint: after an edit of a method or of the training recipe, no old row survives."""
    cfg = suite_config("smoke", params)
    exp = Experiment("tiny", "base2new", 2, ("CoOp",), (1,), epochs=2, datasets=(smoke.datasets[1],))
    cfg = dataclasses.replace(cfg, experiments={"tiny": exp})
    out = tmp_path / "tiny.csv"
    first = run_experiment(smoke, cfg, "tiny", out, compute=LOCAL, progress=None)
    calls: list[str] = []
    edited = dataclasses.replace(cfg, methods={**cfg.methods, "CoOp": MethodSpec("CoOp", learner="coop",
                                                                                 learner_opts={"n_ctx": 2})})
    again = run_experiment(smoke, edited, "tiny", out, compute=LOCAL, progress=calls.append)
    assert "1 units to run (0 done)" in calls[0] and len(again) == len(first)
    calls.clear()
    retrained = dataclasses.replace(edited, train={**edited.train, "coop": {**edited.train.get("coop", {}), "lr": 0.01}})
    run_experiment(smoke, retrained, "tiny", out, compute=LOCAL, progress=calls.append)
    assert "1 units to run (0 done)" in calls[0]
    calls.clear()
    run_experiment(smoke, retrained, "tiny", out, compute=LOCAL, progress=calls.append)  # unchanged: resumed
    assert "0 units to run (1 done)" in calls[0]


def test_missing_meta_run_fails_before_training(smoke, tmp_path, params):
    cfg = suite_config("smoke", params)
    cfg = dataclasses.replace(cfg, methods={**cfg.methods, "Ghost": MethodSpec("Ghost", meta="no_such_run")},
                              experiments={"g": Experiment("g", "base2new", 2, ("Ghost",), (1,))})
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        run_experiment(smoke, cfg, "g", tmp_path / "g.csv", compute=LOCAL, progress=None)


# ---- meta runs ---------------------------------------------------------------------------------------


def test_required_runs_follow_the_tables(params):
    from gramlib.experiments.meta_runs import required_runs

    mini = required_runs("mini", params)
    assert {"coop_gram", "vpt_gram", "unigram", "coop_gram_pretrain", "coop_no_regulator"} <= set(mini)
    # paired meta seeds (issue 14): every GRAM row's seeds 2 and 3 tune from runs of task-sampler seeds 2, 3
    assert {"vpt_gram@seed2", "vpt_gram@seed3", "unigram@seed3", "coop_gram_pretrain@seed2",
            "coop_no_regulator@seed3"} <= set(mini)
    assert not any(r.startswith("unigram_") or r.endswith("@seed1") for r in mini)
    paper = required_runs("paper", params)
    assert {"unigram_pretrain", "unigram_no_regulator", "unigram_tokens_8"} <= set(paper)


def test_image_side_meta_runs_start_first(params):
    from gramlib.config import get_profile
    from gramlib.experiments.meta_runs import longest_first

    names = ["coop_gram", "coop_gram_pretrain", "vpt_gram", "coop_no_regulator", "unigram"]
    assert longest_first(get_profile("mini"), names, params) == [
        "vpt_gram", "unigram", "coop_gram", "coop_gram_pretrain", "coop_no_regulator"]


def test_fingerprint_tracks_config_and_a_finished_run_is_current(smoke, params, monkeypatch, tmp_path):
    from gramlib.experiments import meta_runs

    # a changed setting of the run changes the fingerprint; an unrelated variant's does not
    a = meta_runs.fingerprint(smoke, "coop_gram", params)
    p2 = copy.deepcopy(params)
    p2["meta"]["meta"]["lr_theta"] = 0.5
    assert meta_runs.fingerprint(smoke, "coop_gram", p2)["config"] != a["config"]
    p3 = copy.deepcopy(params)
    p3["meta"]["variants"]["vpt_gram"]["learner_cfg"]["n_tokens"] = 7
    assert meta_runs.fingerprint(smoke, "coop_gram", p3) == a
    assert meta_runs.fingerprint(smoke, "coop_gram_pretrain", params)["kind"] == "pretrain"


def test_train_run_then_current_then_stale(smoke, params, tmp_path):
    from gramlib.experiments import meta_runs

    prof = dataclasses.replace(smoke, artifacts_root=str(tmp_path / "art"))
    # the CHC pairs the runs read: copy the truth-derived pairs so this test needs no CHC stage
    from gramlib.gram.tasks import truth_pairs

    (prof.artifacts / "chc").mkdir(parents=True)
    truth_pairs(pd.read_parquet(prof.root / "cc3m_truth.parquet")).to_parquet(prof.artifacts / "chc" / "pairs.parquet")
    import shutil

    from gramlib.clip.pretrain import backbone_dir

    shutil.copytree(backbone_dir(smoke), backbone_dir(prof))
    p = copy.deepcopy(params)
    p["profiles"]["smoke"]["meta"]["steps"] = 3
    assert not meta_runs.is_current(prof, "coop_gram", p)
    info = meta_runs.train_run(prof, "coop_gram", p)
    assert info["name"] == "coop_gram" and meta_runs.is_current(prof, "coop_gram", p)
    assert meta_runs.ensure_runs(prof, ["coop_gram"], params=p) == []  # nothing to do
    p["profiles"]["smoke"]["meta"]["steps"] = 4
    assert not meta_runs.is_current(prof, "coop_gram", p)


# ---- tables, figures, index ----------------------------------------------------------------------------


def _b2n_table(rows):
    return pd.DataFrame([{"dataset": "Average", "method": m, "metric": k, "mean": v, "std": 0.1, "n_seeds": 3}
                         for m, d in rows.items() for k, v in d.items()], columns=TABLE_COLUMNS)


def test_direction_check_against_the_papers_table1():
    # paper Table 1 averages: CoOp new 73.11 -> CoOp+GRAM 74.93 (+1.82); VPT H 72.43 -> 74.12 (+1.69)
    ours = _b2n_table({"CoOp": {"new": 70.0}, "CoOp+GRAM": {"new": 69.0}, "VPT": {"new": 60.0},
                       "VPT+GRAM": {"new": 61.5}})
    check = direction_check(ours, 1, ["new"])
    got = check.set_index("pair")
    assert got.loc["CoOp+GRAM − CoOp", "ours"] == pytest.approx(-1.0)
    assert got.loc["CoOp+GRAM − CoOp", "paper"] == pytest.approx(74.93 - 73.11)
    assert got.loc["CoOp+GRAM − CoOp", "same_direction"] is False or not got.loc["CoOp+GRAM − CoOp", "same_direction"]
    assert got.loc["VPT+GRAM − VPT", "paper"] == pytest.approx(74.21 - 72.34)
    assert bool(got.loc["VPT+GRAM − VPT", "same_direction"])
    assert "1 of 2" in describe_check(check)


def test_fit_room_by_hand():
    def row(ds, seed, epoch, split, acc):
        return {"protocol": "base2new", "method": "CoOp", "dataset": ds, "seed": seed, "epoch": epoch,
                "split": split, "accuracy": acc}
    rows = pd.DataFrame([row("a", 1, 10, "train", 80.0), row("b", 1, 10, "train", 60.0),
                         row("a", 2, 10, "train", 90.0), row("b", 2, 10, "train", 70.0),
                         row("a", 1, 10, "new", 50.0), row("b", 1, 10, "new", 40.0),
                         row("a", 2, 10, "new", 52.0), row("b", 2, 10, "new", 42.0),
                         row("a", 1, 5, "train", 10.0)])  # an epoch not asked for
    probe = pd.DataFrame({"dataset": ["a", "b"], "seed": [1, 1], "train": [100.0, 98.0], "base": [70.0, 60.0]})
    t = fit_room(rows, [10], probe).set_index(["dataset", "method", "metric"])
    # seed 1: (80 + 60) / 2 = 70, seed 2: (90 + 70) / 2 = 80 -> 75 ± std(70, 80)
    assert t.loc[("Average", "CoOp @ epoch 10", "train"), "mean"] == pytest.approx(75.0)
    assert t.loc[("Average", "CoOp @ epoch 10", "train"), "std"] == pytest.approx(np.std([70, 80], ddof=1))
    assert t.loc[("a", "CoOp @ epoch 10", "new"), "mean"] == pytest.approx(51.0)
    assert t.loc[("Average", "linear probe", "train"), "mean"] == pytest.approx(99.0)
    assert t.loc[("Average", "linear probe", "base"), "n_seeds"] == 1
    assert not any("epoch 5" in m for m in t.index.get_level_values("method"))
    assert math.isnan(t.loc[("a", "CoOp @ epoch 10", "new"), "se_test_draw"])  # rows without fold scores

    # with fold scores: the new rows' folds (the same on both seeds) 40, 50, 50, 50, 60 on a, 40 on every fold of b
    folds = {"a": [40.0, 50.0, 50.0, 50.0, 60.0], "b": [40.0] * 5}
    for k in range(5):
        rows[f"acc_fold{k}"] = [folds[d][k] if s == "new" else np.nan for d, s in zip(rows["dataset"], rows["split"])]
    t = fit_room(rows, [10], probe).set_index(["dataset", "method", "metric"])
    # a: variance 50 (ddof 1) / 5 = 10 (4 df); Average: (10 + 0) / 4 = 2.5; train rows: the seeds' alone
    assert t.loc[("a", "CoOp @ epoch 10", "new"), "se_test_draw"] == pytest.approx(math.sqrt(10.0))
    assert t.loc[("Average", "CoOp @ epoch 10", "new"), "se_test_draw"] == pytest.approx(math.sqrt(2.5))
    assert math.isnan(t.loc[("Average", "CoOp @ epoch 10", "train"), "se_test_draw"])
    assert math.isnan(t.loc[("Average", "linear probe", "base"), "ci_low"])  # one seed, no folds


def test_direction_check_maps_rows_to_the_papers_names():
    # Table 6: -gradient regulating new 74.79 vs UNIGRAM 75.92 (-1.13)
    ours = _b2n_table({"Host": {"new": 50.0}, "Host -reg": {"new": 49.0}})
    check = direction_check(ours, 6, ["new"], pairs=(("Host", "Host -reg"),),
                            paper_names={"Host": "UNIGRAM", "Host -reg": "-gradient regulating"})
    assert check["paper"].iloc[0] == pytest.approx(74.79 - 75.92)
    assert check["paper_pair"].iloc[0] == "-gradient regulating − UNIGRAM"
    assert bool(check["same_direction"].iloc[0])


def test_epoch_curves_and_init_spread_by_hand():
    rows = []
    for seed, shift in ((1, 0.0), (2, 2.0)):
        for ds, base in (("a", 50.0), ("b", 70.0)):
            for epoch in (1, 2):
                for split, off in (("base", 0.0), ("new", -10.0)):
                    rows.append({"protocol": "base2new", "method": "M", "seed": seed, "shots": 16, "dataset": ds, "epoch": epoch,
                                 "split": split, "accuracy": base + off + shift + epoch})
    df = pd.DataFrame(rows)
    c = epoch_curves(df).set_index(["split", "epoch"])
    # epoch 2, new: seed 1 mean over datasets (42+62)/2 = 52, seed 2 = 54 -> mean 53, std sqrt(2)
    assert c.loc[("new", 2), "mean"] == pytest.approx(53.0)
    assert c.loc[("new", 2), "std"] == pytest.approx(np.sqrt(2.0))
    assert c.loc[("new", 2), "n_seeds"] == 2
    s = init_spread(df).set_index("seed")
    # last epoch, seed 1: base (52+72)/2 = 62, new 52, H = 2*62*52/114
    assert s.loc[1, "base"] == pytest.approx(62.0) and s.loc[1, "new"] == pytest.approx(52.0)
    assert s.loc[1, "H"] == pytest.approx(2 * 62 * 52 / 114)


def test_dataset_curves_and_turning_points_by_hand():
    new = {"a": {1: [50, 40, 42, 45], 2: [52, 42, 44, 47]},  # seed means 51, 41, 43, 46: falls, partly recovers
           "b": {1: [60, 62, 64, 66], 2: [60, 62, 64, 66]},  # rises
           "c": {1: [30, 30, 30, 30], 2: [30, 30, 30, 30]}}  # flat: ties go to the first epoch
    rows = [{"protocol": "base2new", "method": "M", "dataset": d, "seed": seed, "epoch": e + 1, "split": "new",
             "accuracy": float(acc)} for d, by_seed in new.items() for seed, accs in by_seed.items()
            for e, acc in enumerate(accs)]
    rows += [{"protocol": "base2new", "method": "M", "dataset": "a", "seed": 1, "epoch": 1, "split": "base", "accuracy": 0.0},
             {"protocol": "base2new", "method": "M", "dataset": "a", "seed": 1, "epoch": 0, "split": "new", "accuracy": 0.0},
             {"protocol": "cross_dataset", "method": "M", "dataset": "a", "seed": 1, "epoch": 2, "split": "new", "accuracy": 0.0}]
    curves = dataset_curves(pd.DataFrame(rows))
    assert curves[curves["dataset"] == "a"].sort_values("epoch")["mean"].tolist() == [51.0, 41.0, 43.0, 46.0]
    t = turning_points(curves, ["method", "dataset"]).set_index("dataset")
    assert t.loc["a", ["first", "highest", "highest_epoch", "lowest", "lowest_epoch", "final"]].tolist() == [51, 51, 1, 41, 2, 46]
    assert t.loc["a", "fall_from_highest"] == 5 and t.loc["a", "back_from_lowest"] == 5
    assert t.loc["b", ["highest_epoch", "lowest_epoch", "fall_from_highest", "back_from_lowest"]].tolist() == [4, 1, 0, 6]
    assert t.loc["c", ["highest_epoch", "lowest_epoch"]].tolist() == [1, 1]
    # by method alone, on epoch_curves' dataset means (47, 133/3, 137/3, 142/3): the average's own turning points
    avg = turning_points(epoch_curves(pd.DataFrame(rows))[lambda c: c["split"] == "new"], ["method"]).iloc[0]
    assert (avg["lowest"], avg["lowest_epoch"], avg["final"]) == (pytest.approx(133 / 3), 2, pytest.approx(142 / 3))


def test_grad_alignment_smooths_each_run():
    log = pd.DataFrame({"step": [1, 2, 3], "grad_cosine": [0.0, 0.3, 0.6], "grad_cosine_raw": [0.1, 0.1, 0.1]})
    out = grad_alignment({"r": log}, window=2)
    assert out["regulated"].tolist() == pytest.approx([0.0, 0.15, 0.45])
    assert out["raw"].tolist() == pytest.approx([0.1, 0.1, 0.1])


def test_save_table_and_index(tmp_path):
    table = _b2n_table({"CoOp": {"base": 70.0, "new": 60.0, "H": 64.6}})
    stamp = {"profile": "mini", "commit": "abcdef1234567", "dirty": False, "seeds": [1, 2, 3], "shots": 16,
             "experiment": "base2new", "runtime_s": 12.3, "title": "Table 1: base-to-new",
             "headline": "Average H: CoOp 64.60"}
    paths = save_table(table, 1, "base_to_new", tmp_path, "| ours |\n", stamp)
    assert pd.read_csv(paths["csv"]).columns.tolist() == TABLE_COLUMNS
    md = paths["md"].read_text()
    assert "| ours |" in md and "The paper's Table 1" in md and "77.58" in md  # the paper: CoOp, Average, base
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "figure1b_overfitting.provenance.json").write_text(
        json.dumps({"profile": "mini", "commit": "0123456789abc", "seeds": [1, 2, 3], "title": "Figure 1b"}))
    index = build_index(tmp_path)
    assert "tables/table1_base_to_new.md" in index and "figures/figure1b_overfitting.png" in index
    assert "abcdef1234" in index and "seeds [1, 2, 3]" in index and "Average H: CoOp 64.60" in index
    with pytest.raises(ValueError, match="missing columns"):
        save_table(table.drop(columns="std"), 1, "x", tmp_path, "", stamp)


def test_experiment_rows_refuses_an_unrun_experiment(smoke, tmp_path, params):
    from gramlib.experiments.suite import experiment_rows

    prof = dataclasses.replace(smoke, artifacts_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has not .*run"):
        experiment_rows(prof, "overfit", params=params)


def test_unit_key_is_stable():
    assert Unit("e", "base2new", "CoOp+GRAM", 2, 16, "mini_glyphs_blueprint").key == "base2new|CoOp+GRAM|2|16|mini_glyphs_blueprint"


def test_longest_units_go_first_and_order_is_otherwise_kept(params):
    from gramlib.experiments.suite import longest_first

    cfg = suite_config("mini", params)
    todo = [Unit("e", "base2new", m, s, 16, d) for s in (1, 2) for m in ("CLIP", "CoOp", "VPT+GRAM", "VPT")
            for d in ("a", "b")]
    order = longest_first(todo, cfg, "mini", params)
    assert [u.method for u in order[:8]] == ["VPT+GRAM", "VPT+GRAM", "VPT", "VPT"] * 2  # image-side runs first
    assert [u.method for u in order[-4:]] == ["CLIP"] * 4
    assert sorted(order, key=todo.index) == todo  # a permutation of the same units
    assert [(u.seed, u.dataset) for u in order if u.method == "CoOp"] == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]


def test_units_evaluated_every_epoch_cost_more_and_learners_resolve_through_meta_runs(params):
    from gramlib.experiments.suite import longest_first, unit_key, unit_learner

    cfg = suite_config("mini", params)
    assert unit_learner("mini", cfg, "VPT+GRAM", params) == "vpt"
    assert unit_learner("mini", cfg, "CoOp+GRAM -meta-learning (prompt pre-training)", params) == "coop"
    assert unit_learner("mini", cfg, "UNIGRAM", params) == "joint"
    # base2new evaluates VPT every epoch (Figure 3a) but not UNIGRAM: same learner cost, VPT first
    todo = [Unit("base2new", "base2new", m, 1, 16, "a") for m in ("UNIGRAM", "CoOp", "VPT")]
    assert [u.method for u in longest_first(todo, cfg, "mini", params)] == ["VPT", "UNIGRAM", "CoOp"]
    df = pd.DataFrame([{"protocol": u.protocol, "method": u.method, "seed": u.seed, "shots": u.shots,
                        "dataset": u.dataset} for u in todo])
    assert list(unit_key(df["protocol"], df["method"], df["seed"], df["shots"], df["dataset"])) == [u.key for u in todo]


def test_meta_seed_spread_by_hand():
    from gramlib.reporting.tables import meta_seed_spread

    rows = []
    for method, base, new in (("CoOp", 80.0, 60.0), ("G", 78.0, 66.0), ("G2", 80.0, 60.0), ("G3", 76.0, 63.0)):
        for seed, jitter in ((1, -1.0), (2, 1.0)):
            for split, acc in (("base", base + jitter), ("new", new)):
                rows.append({"protocol": "base2new", "dataset": "d", "method": method, "seed": seed, "shots": 16,
                             "epoch": 10, "split": split, "accuracy": acc})
    out = meta_seed_spread(pd.DataFrame(rows), ["G", "G2", "G3"], "CoOp").set_index(["method", "metric"])
    h = [2 * b * n / (b + n) for b, n in ((78, 66), (80, 60), (76, 63))]
    assert out.loc[("G over meta seeds", "H"), "mean"] == pytest.approx(np.mean(h))
    assert out.loc[("G over meta seeds", "H"), "std"] == pytest.approx(np.std(h, ddof=1))
    assert out.loc[("G over meta seeds", "base"), "mean"] == pytest.approx(78.0)
    assert out.loc[("G over meta seeds", "new"), "n_seeds"] == 3
    assert out.loc[("CoOp", "new"), "mean"] == 60.0 and out.loc[("G2", "base"), "std"] == pytest.approx(np.sqrt(2))


def test_text_positions_benchmark_measures_both_modes_on_a_real_unit(smoke, params):
    """benchmarks/text_positions.py on the smoke world: both modes run the same suite unit, and give
    the same accuracies (the trimmed positions cannot change the function)."""
    import importlib.util
    from pathlib import Path

    from gramlib.experiments.protocols import load_env

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "text_positions.py"
    spec = importlib.util.spec_from_file_location("bench_text_positions", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.measure(load_env(smoke), suite_config("smoke", params), ["CoOp"], smoke.datasets[1], repeats=1)
    r = res["CoOp"]
    assert len(r["unit_s"]["full_context"]) == len(r["unit_s"]["used_positions"]) == 1 and r["speedup"] > 0
    assert r["accuracies_agree"] and len(r["accuracy_used_positions"]) == 2  # base and new


def test_feature_cache_benchmark_agrees_across_modes_on_the_smoke_world(smoke):
    """benchmarks/coop_feature_cache.py: cached features, reference-style recompute and in-memory pixels
    train the same θ (no augmentation) and reach the same accuracy; the ratio is reported."""
    import importlib.util
    from pathlib import Path

    from gramlib.experiments.protocols import load_env

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "coop_feature_cache.py"
    spec = importlib.util.spec_from_file_location("bench_coop_feature_cache", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.measure(load_env(smoke), smoke.datasets[1], shots=2, epochs=2)
    assert res["acc_cached"] == res["acc_recompute"] == res["acc_recompute_tower"]
    assert res["max_abs_theta_diff"] < 1e-5 and res["speedup"] > 0 and res["n_train"] > 0


def test_a_meta_method_can_switch_off_theta_star_or_the_regulator(tmp_path):
    """resolve(): θ* and R^φ* each on or off (the ablation at a glance); "hand" builds the learner's own start."""
    import types

    import torch

    from gramlib.experiments.spec import MethodSpec
    from gramlib.experiments.suite import meta_dir, resolve
    from gramlib.gram.regulator import RegulatorConfig, init_regulator
    from gramlib.gram.run_config import MetaTrainConfig
    from gramlib.io import save_safetensors, write_json

    prof = types.SimpleNamespace(artifacts=tmp_path)
    out = meta_dir(prof, "run")
    theta = {"ctx": torch.randn(4, 8)}
    save_safetensors(out / "theta_star.safetensors", theta)
    save_safetensors(out / "phi_star.safetensors", init_regulator(theta, RegulatorConfig()))
    write_json(out / "config.json", {"run": MetaTrainConfig().to_dict()})

    learner, opts, theta0, hook = resolve(prof, MethodSpec("GRAM", meta="run"))
    assert learner == "coop" and opts == {"ctx_init": None, "n_ctx": 4} and torch.equal(theta0["ctx"], theta["ctx"])
    assert hook is not None
    _, opts, theta0, hook = resolve(prof, MethodSpec("θ* only", meta="run", regulator="identity"))
    assert theta0 is not None and hook is None
    _, opts, theta0, hook = resolve(prof, MethodSpec("R only", meta="run", theta="hand"))
    assert opts == {} and theta0 is None and hook is not None  # CoOp's own "a photo of a"
    with pytest.raises(ValueError, match="theta must be meta|hand"):
        MethodSpec("bad", meta="run", theta="zeros")
    with pytest.raises(ValueError, match="parts of a meta-training run"):
        MethodSpec("bad", learner="coop", regulator="identity")
