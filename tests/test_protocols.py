"""Evaluation protocols (gramlib.experiments.protocols) and feature banks on the smoke world."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from gramlib.clip.features import encode_images, eval_transform
from gramlib.data.coop import fewshot_split, generate_fewshot, load_dataset, subsample_dataset
from gramlib.tuning.inputs import train_inputs, view_bank
from gramlib.reference.audit import harmonic_mean
from gramlib.reporting.tables import base_to_new_table
from gramlib.experiments.protocols import (
    COLUMNS,
    append_rows,
    check_classnames,
    load_env,
    make_learner,
    run_unit,
    unit_data,
)

FAST = {"epochs": 2, "batch_size": 32}


@pytest.fixture(scope="module")
def env(smoke, tmp_path_factory):
    return load_env(smoke, feature_cache=tmp_path_factory.mktemp("features"))


def test_base2new_sampling_rules(env):
    """K shots per class sampled on ALL classes first, then base = first ceil(n/2) labels, relabelled."""
    name, k, seed = env.profile.datasets[0], 4, 2
    base, targets = unit_data(env, "base2new", name, k, seed)
    full = load_dataset(env.coop_root, name)
    n = full.num_classes
    m = math.ceil(n / 2)
    assert base.classnames == full.classnames[:m]
    assert [t.classnames for t in targets] == [full.classnames[:m], full.classnames[m:]]
    # train: exactly K per base class, labels 0..m-1, and the same images as the full-class sample
    counts = pd.Series([d.label for d in base.train]).value_counts()
    assert sorted(counts.index) == list(range(m)) and set(counts) == {k}
    sample_all = generate_fewshot(full.train, k, seed)
    assert [d.impath for d in base.train] == [d.impath for d in sample_all if d.label < m]
    # the new classes' shots come from the same full-class sample; sampling after the split
    # (a fresh RNG for the new classes) would pick other images: the order of the rules matters
    new_train = subsample_dataset(fewshot_split(full, k, seed, cache_dir=env.fewshot_cache), "new").train
    assert [d.impath for d in new_train] == [d.impath for d in sample_all if d.label >= m]
    after = generate_fewshot(subsample_dataset(full, "new").train, k, seed)
    assert [d.impath for d in after] != [d.impath for d in new_train]
    # val: min(K, 4) per class; test: untouched, new labels relabelled from 0
    assert set(pd.Series([d.label for d in base.val]).value_counts()) == {min(k, 4)}
    base_test, new_test = targets[0].data, targets[1].data
    assert len(base_test) + len(new_test) == len(full.test)
    assert {d.label for d in new_test} == set(range(n - m))
    assert {d.classname for d in new_test} == set(full.classnames[m:])
    # the selection is cached as JSON and reused
    assert (env.fewshot_cache / name / f"shot_{k}-seed_{seed}.json").is_file()


def test_cross_protocol_targets(env):
    prof = env.profile
    src, targets = unit_data(env, "transfer", prof.source, 4, 1)
    others = [d for d in prof.datasets if d != prof.source]
    assert src.name == prof.source and [t.dataset for t in targets] == [prof.source, *prof.variants, *others]
    assert all(len(t.data) > 0 for t in targets) and {t.split for t in targets} == {"test"}
    base, with_train = unit_data(env, "base2new", prof.source, 4, 1, train_split=True)
    assert [t.split for t in with_train] == ["base", "new", "train"] and with_train[2].data == base.train
    with pytest.raises(ValueError, match="unknown protocol 'cross_domain'"):
        unit_data(env, "cross_domain", prof.source, 4, 1)


def test_feature_banks(env):
    be = env.backbone
    data = load_dataset(env.coop_root, env.profile.datasets[0]).train[:12]
    exact = view_bank(be, data, "none", cache_dir=env.feature_cache)
    ref = encode_images(be, [d.impath for d in data], eval_transform(be), None)
    assert exact.n_views == 1 and torch.allclose(exact.views[0], ref, atol=1e-6)
    aug = view_bank(be, data, "aug:3", cache_dir=env.feature_cache, seed=1)
    assert aug.views.shape == (3, 12, ref.shape[1])
    assert not torch.allclose(aug.views[0], aug.views[1])  # distinct augmented views
    assert torch.equal(view_bank(be, data, "aug:3", cache_dir=None, seed=1).views, aug.views)  # seeded
    assert not torch.allclose(view_bank(be, data, "aug:3", cache_dir=None, seed=2).views, aug.views)
    # a pixel bank with the same policy and seed holds exactly the crops the features came from
    pix = view_bank(be, data, "aug:3", features=False, seed=1)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(be.model.encode_image(pix.views[2]), dim=-1)
    assert torch.allclose(feats, aug.views[2], atol=1e-5)
    # which tower is cached depends on the learner
    coop = make_learner(env, "coop", "a photo of a {}.")
    vpt = make_learner(env, "vpt", "a photo of a {}.")
    joint = make_learner(env, "joint", "a photo of a {}.")
    names = load_dataset(env.coop_root, env.profile.datasets[0]).classnames
    d_coop, d_vpt, d_joint = (train_inputs(lrn, be, data, names, cache_dir=env.feature_cache)
                              for lrn in (coop, vpt, joint))
    assert d_coop.bank.is_features and d_coop.text_features is None
    assert not d_vpt.bank.is_features and d_vpt.text_features.shape == (len(names), ref.shape[1])
    assert not d_joint.bank.is_features and d_joint.text_features is None
    with pytest.raises(ValueError, match="cannot be cached"):
        train_inputs(vpt, be, data, names, cache_features=True)


def test_run_base2new_writes_tidy_rows(env, tmp_path):
    out = tmp_path / "results.csv"
    name = env.profile.datasets[0]
    base, targets = unit_data(env, "base2new", name, 4, 1)
    rows = [r for m in ("zeroshot", "coop")
            for r in run_unit(env, "base2new", m, 1, 4, None if m == "zeroshot" else base, targets, train=FAST)]
    append_rows(out, rows)
    df = pd.DataFrame(rows, columns=COLUMNS)
    on_disk = pd.read_csv(out)
    assert list(on_disk.columns) == COLUMNS and len(on_disk) == len(df)
    zs, coop = df[df.method == "zeroshot"], df[df.method == "coop"]
    assert set(zs.epoch) == {0} and set(coop.epoch) == {1, 2}
    assert set(df.split) == {"base", "new"} and set(df.dataset) == {name}
    assert df.accuracy.between(0, 100).all() and (df.n_test > 0).all()
    assert (coop.runtime_s > 0).all() and set(df.profile) == {env.profile.name}
    # appending keeps one header; a file with other columns is refused
    append_rows(out, run_unit(env, "base2new", "zeroshot", 1, 4, None, targets))
    assert len(pd.read_csv(out)) == len(df) + 2
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        append_rows(bad, df.to_dict("records"))
    table = base_to_new_table(pd.read_csv(out))
    assert set(table.metric) == {"base", "new", "H"} and "Average" in set(table.dataset)


def test_harmonic_mean_on_averaged_accuracies():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0 and math.isnan(harmonic_mean(float("nan"), 1.0))
    rows = []
    for seed, (b, n) in enumerate([(90.0, 10.0), (10.0, 90.0)], 1):
        for split, acc in (("base", b), ("new", n)):
            rows.append({"protocol": "base2new", "dataset": "d", "method": "coop", "seed": seed, "shots": 16,
                         "epoch": 10, "split": split, "accuracy": acc})
    table = base_to_new_table(pd.DataFrame(rows))
    # H of the means (50, 50) is 50; the mean of per-seed H values would be 18
    h = table[(table.dataset == "d") & (table.metric == "H")]
    assert h["mean"].item() == pytest.approx(50.0) and h["n_seeds"].item() == 2


def test_bad_inputs(env, tmp_path, capsys, caplog):
    with pytest.raises(ValueError, match="unknown method.*'coopp'.*known: zeroshot, coop"):
        make_learner(env, "coopp", "a photo of a {}.")
    from gramlib.cli import main

    assert main(["suite", "--profile", "smoke", "--experiment", "nope", "--out-dir", str(tmp_path)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    # more shots than a class provides: Dassl's rule keeps the class whole, and says so
    name = env.profile.datasets[0]
    per_class = pd.Series([d.label for d in load_dataset(env.coop_root, name).train]).value_counts().min()
    with caplog.at_level("WARNING", logger="gramlib.data.coop"):
        unit_data(env, "base2new", name, int(per_class) + 1, 1)
    assert f"have fewer than {per_class + 1} shots, all of their images are kept" in caplog.text
    # a class name longer than the tokenizer's context
    long_name = " ".join(["hydrant"] * 40)
    for method in ("coop", "zeroshot", "vpt"):
        learner = make_learner(env, method, "a photo of a {}.")
        with pytest.raises(ValueError, match=r"mini_x: class name .*does not fit.*context length is 24"):
            check_classnames(learner, ["dog", long_name], "mini_x")


@pytest.mark.parametrize("method", ["coop", "vpt"])
def test_targets_with_the_same_classes_share_one_text_pass(env, monkeypatch, method):
    """ImageNet, -V2 and -Sketch have the same 1,000 classes: under a learned context their class features
    are computed once per evaluation. A template learner (VPT) keeps each target's own frozen features
    (its template may differ), so nothing is shared there; the accuracies equal unshared evaluation."""
    from dataclasses import replace

    from gramlib.experiments import protocols

    name = env.profile.datasets[0]
    base, (base_t, new_t) = unit_data(env, "base2new", name, 4, 1)
    twins = [base_t, replace(base_t, split="base twin"), new_t]
    seen = []
    real = protocols.class_features

    def counted(learner, theta, data, **kw):
        seen.append(tuple(data.classnames))
        return real(learner, theta, data, **kw)

    monkeypatch.setattr(protocols, "class_features", counted)
    rows = run_unit(env, "base2new", method, 1, 4, base, twins, train=FAST)
    acc = {r["split"]: r["accuracy"] for r in rows if r["epoch"] == 2}
    assert acc["base"] == acc["base twin"]
    assert len(seen) == 2 * (2 if method == "coop" else 3)  # two evaluated epochs
    monkeypatch.setattr(protocols, "class_features", lambda *a, **kw: None)  # no sharing: predict's own pass
    again = run_unit(env, "base2new", method, 1, 4, base, twins, train=FAST)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]


def test_frozen_class_text_features_are_cached_by_their_sentences(env, tmp_path, monkeypatch):
    """Zero-shot / VPT text features: stored once per (weights, learner, prompt sentences), loaded as the
    very tensor computed; another template is another entry; a learner of other weights is not cached."""
    from gramlib.tuning.inputs import class_text_bank

    names = load_dataset(env.coop_root, env.profile.datasets[0]).classnames
    zs = make_learner(env, "zeroshot", "a photo of a {}.")
    computed = zs.frozen_text_features(names)
    calls = [0]
    real = zs.frozen_text_features

    def counted(classnames):
        calls[0] += 1
        return real(classnames)

    monkeypatch.setattr(zs, "frozen_text_features", counted)
    first = class_text_bank(zs, names, env.backbone, tmp_path)
    again = class_text_bank(zs, names, env.backbone, tmp_path)
    assert calls[0] == 1 and torch.equal(first, computed) and torch.equal(again, computed)
    zs.template = "a drawing of a {}."
    other = class_text_bank(zs, names, env.backbone, tmp_path)
    assert calls[0] == 2 and not torch.equal(other, computed)
    assert len(list((tmp_path / "class_text").glob("*.npy"))) == 2
    assert class_text_bank(make_learner(env, "coop", "a photo of a {}."), names, env.backbone, tmp_path) is None
    import copy

    foreign = copy.deepcopy(zs)  # its own copy of the weights: never keyed by env.backbone's identity
    assert torch.equal(class_text_bank(foreign, names, env.backbone, tmp_path), other)
    assert len(list((tmp_path / "class_text").glob("*.npy"))) == 2
