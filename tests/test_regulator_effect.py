"""The regulator's effect, measured where it acts (issue 15): held-out topics, alignment, intervals."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gramlib.gram.regulator import RegulatorConfig, init_regulator
from gramlib.gram.regulator_effect import (EFFECT_COLUMNS, departure, effect_table, gradient_alignment,
                                           paired_interval)
from gramlib.gram.tasks import TaskConfig, TaskPool, sample_task, sample_tasks, split_topics


def _pool(words: list[str], ways: int = 3) -> TaskPool:
    members = tuple((np.arange(10 * i, 10 * i + 10),) for i in range(len(words)))
    return TaskPool(tuple(words), tuple(range(len(words))), members, tuple((0,) for _ in words),
                    TaskConfig(ways=ways, shots=2, query=3, domain_shift=False))


def test_held_out_topic_words_never_reach_a_training_task():
    words = [f"w{i % 17}" for i in range(24)]  # some words name two classes (as CHC's topics can)
    pool = _pool(words)
    train, held = split_topics(pool, 0.3, seed=4)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(pool)))
    held_words = {words[c] for c in held}
    assert len(held_words) == round(0.3 * 17) and not held_words & {words[c] for c in train}
    again = split_topics(pool, 0.3, seed=4)
    assert np.array_equal(again[1], held) and not np.array_equal(split_topics(pool, 0.3, seed=5)[1], held)
    rng = np.random.default_rng(0)
    for task in sample_tasks(pool, rng, 50, train):
        assert not set(task.classnames) & held_words
    assert all(set(t.classnames) <= held_words for t in sample_tasks(pool, rng, 20, held))
    # restricting to every class is the unrestricted sampler, draw for draw
    a = sample_task(pool, np.random.default_rng(3))
    b = sample_task(pool, np.random.default_rng(3), classes=np.arange(len(pool)))
    assert np.array_equal(a.support_idx, b.support_idx) and a.classnames == b.classnames
    assert split_topics(pool, 0.0, seed=1)[1].size == 0


def test_a_split_that_leaves_too_few_words_is_a_clear_error():
    with pytest.raises(ValueError, match="heldout_topics"):
        split_topics(_pool([f"w{i}" for i in range(8)], ways=3), 0.1, seed=0)  # 1 word held out < 3 ways
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_topics(_pool([f"w{i}" for i in range(8)]), 1.0, seed=0)


def test_paired_interval_by_hand():
    raw, reg = [0.1, 0.2, 0.3], [0.2, 0.5, 0.3]  # differences 0.1, 0.3, 0.0: mean 0.1333, sd 0.1528
    d = np.array([0.1, 0.3, 0.0])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 d.f.) from a printed table
    lo, hi = paired_interval(raw, reg)
    assert lo == pytest.approx(d.mean() - half) and hi == pytest.approx(d.mean() + half)
    assert all(math.isnan(v) for v in paired_interval([0.1], [0.2]))


def test_effect_table_and_departure():
    per_task = pd.DataFrame({"stage": ["before"] * 3 + ["after"] * 3, "split": "heldout_tasks",
                             "cos_raw": [0.1, 0.2, 0.3, 0.4, 0.4, 0.4], "cos_regulated": [0.1, 0.2, 0.3, 0.5, 0.6, 0.4],
                             "departure": [0, 0, 0, 0.1, 0.2, 0.3]})
    t = effect_table(per_task)
    assert list(t.columns) == EFFECT_COLUMNS and t["stage"].tolist() == ["before", "after"]
    before, after = t.iloc[0], t.iloc[1]
    assert before.ci_low == before.ci_high == 0.0 and before.n_tasks == 3
    assert after.cos_regulated == pytest.approx(0.5) and after.ci_low < 0.1 < after.ci_high
    assert departure(per_task, "after") == pytest.approx(0.2) and departure(per_task, "before") == 0


def _quadratic(theta, batch):  # L = 0.5 ||theta - batch||^2: gradient theta - batch, known by hand
    return 0.5 * (theta["ctx"] - batch).pow(2).sum()


def test_gradient_alignment_by_hand():
    torch.manual_seed(0)
    theta = {"ctx": torch.randn(2, 6)}
    support, query = torch.randn(2, 6), torch.randn(2, 6)
    reg = RegulatorConfig()  # token_shared, W = 0: R(g) = tanh(b_gamma) g + rms(g) tanh(b_beta)
    phi0 = init_regulator(theta, reg)
    g, gq = (theta["ctx"] - support).double().numpy().ravel(), (theta["ctx"] - query).double().numpy().ravel()
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    at_start = gradient_alignment(theta, phi0, support, query, _quadratic, reg, phi0)
    assert at_start["cos_raw"] == pytest.approx(cos(g, gq), abs=1e-6)
    assert at_start["cos_regulated"] == pytest.approx(cos(0.95 * g, gq), abs=1e-6)  # a scale changes no angle
    assert at_start["departure"] == 0.0
    # a phi whose biases moved: gamma and beta per element, still W = 0
    phi = {k: v.clone() for k, v in phi0.items()}
    bg = [k for k in phi if "b_gamma" in k or k.endswith("gamma.b")]
    bb = [k for k in phi if "b_beta" in k or k.endswith("beta.b")]
    assert len(bg) == len(bb) == 1, sorted(phi)
    phi[bg[0]] = torch.randn(2, 6) * 0.5
    phi[bb[0]] = torch.randn(2, 6) * 0.5
    gm, bt = np.tanh(phi[bg[0]].double().numpy().ravel()), np.tanh(phi[bb[0]].double().numpy().ravel())
    rms = math.sqrt(float(np.mean(g ** 2)))
    r = gm * g + rms * bt
    got = gradient_alignment(theta, phi, support, query, _quadratic, reg, phi0)
    assert got["cos_regulated"] == pytest.approx(cos(r, gq), abs=1e-5)
    assert got["departure"] == pytest.approx(np.linalg.norm(r - 0.95 * g) / np.linalg.norm(g), rel=1e-5)
    none = gradient_alignment(theta, phi, support, query, _quadratic, None)  # the raw-gradient ablation
    assert none["cos_regulated"] == none["cos_raw"] and "departure" not in none


def test_meta_training_holds_topics_out_and_measures_them(smoke, tmp_path, monkeypatch):
    from gramlib.gram import meta_train as mt
    from gramlib.gram.meta import MetaConfig
    from gramlib.gram.run_config import MetaTrainConfig

    cfg = MetaTrainConfig(steps=3, task_source="truth", tasks=TaskConfig(ways=3, shots=2, query=4),
                          meta=MetaConfig(alpha=1.0, lr_theta=1e-2, lr_phi=1e-1, optimizer="adam", meta_batch=2,
                                          vectorize=True), ckpt_every=3, threads=1, heldout_topics=0.3, heldout_tasks=6)
    seen: list[str] = []
    real = mt.sample_tasks

    def spy(pool, rng, n, classes=None):
        tasks = real(pool, rng, n, classes)
        seen.extend(w for t in tasks for w in t.classnames)
        return tasks

    monkeypatch.setattr(mt, "sample_tasks", spy)
    res = mt.meta_train(smoke, cfg, tmp_path, cache_dir=tmp_path / "feat")
    per_task = pd.read_csv(tmp_path / mt.EFFECT_NAME)
    assert len(per_task) == 2 * 6 and set(per_task["stage"]) == {"before", "after"}
    held_words = set(seen[-6 * 3:])  # the last draws are the measurement's held-out tasks
    assert not held_words & set(seen[: 3 * 2 * 3])  # the 3 training steps' 2 tasks x 3 ways
    s = res.summary
    assert s["n_heldout_classes"] > 0 and s["regulator_departure"] > 0  # phi moved at lr 0.1
    assert per_task.loc[per_task.stage == "before", "departure"].eq(0).all()
    assert s["regulator_departure"] == pytest.approx(per_task.loc[per_task.stage == "after", "departure"].mean())
    for name in ("theta_init.safetensors", "phi_init.safetensors"):
        assert (tmp_path / name).exists()
    # the same run without a held-out split draws exactly what it drew before issue 15
    plain = dataclasses.replace(cfg, heldout_topics=0.0)
    seen.clear()
    r2 = mt.meta_train(smoke, plain, tmp_path / "plain", cache_dir=tmp_path / "feat")
    assert "regulator_departure" not in r2.summary and not (tmp_path / "plain" / mt.EFFECT_NAME).exists()
    # at test time: a downstream dataset's K-shot gradient against its base test-set gradient
    from gramlib.experiments.downstream_alignment import downstream_rows
    from gramlib.experiments.protocols import load_env, unit_data
    from gramlib.tuning.inputs import eval_inputs, train_inputs

    env = load_env(smoke, feature_cache=tmp_path / "feat")
    dataset = smoke.datasets[1]
    rows = downstream_rows(env, tmp_path, [dataset], shots=2, seeds=[1])
    assert rows[["stage", "split", "dataset", "seed"]].values.tolist() == [
        ["before", "downstream", dataset, 1], ["after", "downstream", dataset, 1]]
    assert rows.loc[0, "departure"] == 0 and rows.loc[1, "departure"] > 0
    # independently: plain autograd through the learner's own logits on the same images
    from gramlib.learners import build_learner

    learner = build_learner("coop", env.backbone.model, env.backbone.tokenizer)
    train_set, targets = unit_data(env, "base2new", dataset, 2, 1)
    tr = train_inputs(learner, env.backbone, train_set.train, train_set.classnames, cache_dir=env.feature_cache)
    te = eval_inputs(learner, env.backbone, targets[0].data, targets[0].classnames, cache_dir=env.feature_cache)

    def grad(theta, d):
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        loss = torch.nn.functional.cross_entropy(learner.logits(th, d.bank.views[0], train_set.classnames), d.bank.labels)
        return torch.autograd.grad(loss, th["ctx"])[0].flatten()

    theta_star = res.theta
    a, b = grad(theta_star, tr), grad(theta_star, te)
    assert rows.loc[1, "cos_raw"] == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), abs=1e-4)


def test_every_sweep_setting_is_a_valid_configuration_and_typos_fail():
    from gramlib.experiments.regulator_sweep import SETTINGS, setting_config
    from gramlib.gram.run_config import meta_train_config

    base = meta_train_config("mini", "coop_gram")
    assert base.heldout_topics > 0  # the sweep measures on held-out topics
    cfgs = {name: setting_config(base, over, name) for name, over in SETTINGS.items()}
    assert cfgs["default"] == base
    assert cfgs["lr_phi_1e-2"].meta.lr_phi == 1e-2 and cfgs["lr_phi_1e-2"].meta.alpha == base.meta.alpha
    assert cfgs["paper_literal"].meta.regulator.input_norm == "none"
    with pytest.raises(ValueError, match="lr_ph"):
        setting_config(base, {"meta": {"lr_ph": 1e-2}}, "typo")
