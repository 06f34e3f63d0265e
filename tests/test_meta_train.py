"""Meta-training driver on the smoke fixture: the task loss, smoke runs, bit-identical resume, test time."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from gramlib.tuning.inputs import TrainData, ViewBank
from gramlib.gram.meta import MetaConfig, math_attention
from gramlib.gram.meta_data import load_meta_data
from gramlib.gram.meta_train import build_meta_learner, meta_train
from gramlib.gram.run_config import MetaTrainConfig, meta_train_config
from gramlib.gram.task_loss import TaskLoss, meta_batch
from gramlib.gram.test_time import load_meta_result, regulator_hook, tune_with_regulator
from gramlib.gram.regulator import RegulatorConfig
from gramlib.gram.tasks import TaskConfig, sample_tasks


def cfg_for(learner: str = "coop", **kw) -> MetaTrainConfig:
    base = dict(learner=learner, steps=4, task_source="truth", tasks=TaskConfig(ways=3, shots=2, query=4),
                meta=MetaConfig(alpha=1.0, lr_theta=1e-2, lr_phi=1e-2, optimizer="adam", meta_batch=2,
                                vectorize=True), ckpt_every=2, threads=1)
    base.update(kw)
    return MetaTrainConfig(**base)


@pytest.fixture(scope="module")
def coop_setup(smoke, tmp_path_factory):
    cfg = cfg_for()
    bb, learner = build_meta_learner(smoke, cfg)
    data = load_meta_data(smoke, cfg, bb, features=True, cache_dir=tmp_path_factory.mktemp("feat"))
    return cfg, bb, learner, data


def test_task_loss_matches_the_learners_logits(coop_setup):
    cfg, bb, learner, data = coop_setup
    loss = TaskLoss(learner, data.pool.classnames, image_features=True)
    assert loss.tokens.shape[1] < learner.context_length  # prompts cut after the last EOT
    task = sample_tasks(data.pool, np.random.default_rng(0), 1)[0]
    sup, _ = meta_batch([task], data.bank, vectorize=False)[0]
    theta = {k: v.detach() for k, v in learner.prompt_params().items()}
    ref = learner.logits(theta, sup["x"], list(task.classnames))
    torch.testing.assert_close(loss.logits(theta, sup), ref, rtol=1e-5, atol=1e-5)
    # features in the bank are the backbone's normalised image features of those pairs
    assert torch.allclose(data.bank.norm(dim=-1), torch.ones(len(data.bank)), atol=1e-4)


def test_vectorized_and_loop_paths_agree(coop_setup):
    cfg, bb, learner, data = coop_setup
    from gramlib.gram.meta import meta_gradients
    from gramlib.gram.regulator import init_regulator

    loss = TaskLoss(learner, data.pool.classnames, image_features=True)
    theta = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    phi = init_regulator(theta, RegulatorConfig())
    tasks = sample_tasks(data.pool, np.random.default_rng(1), 3)
    a = meta_gradients(theta, phi, meta_batch(tasks, data.bank, True), loss, cfg.meta)
    b = meta_gradients(theta, phi, meta_batch(tasks, data.bank, False), loss, dataclasses.replace(cfg.meta, vectorize=False))
    # fp32 through a second-order graph summed in another order: elements near 0 differ by rounding at the
    # scale of the tensor's largest entries, so the absolute tolerance is relative to that scale
    for grads_a, grads_b in ((a.theta, b.theta), (a.phi, b.phi)):
        for k in grads_a:
            scale = float(grads_a[k].abs().max())
            torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-3, atol=max(1e-5, 1e-3 * scale))


def test_coop_gram_smoke_run_writes_everything(smoke, coop_setup, tmp_path):
    cfg, bb, learner, data = coop_setup
    res = meta_train(smoke, cfg, tmp_path, data=data, backbone=bb)
    for name in ("theta_star.safetensors", "phi_star.safetensors", "config.json", "summary.json", "meta_log.csv"):
        assert (tmp_path / name).exists(), name
    log = pd.read_csv(tmp_path / "meta_log.csv")
    assert log.step.tolist() == [1, 2, 3, 4]
    assert {"grad_cosine", "grad_cosine_raw", "meta_loss", "query_loss_after"} <= set(log.columns)
    assert log.grad_cosine.between(-1, 1).all()
    loaded = load_meta_result(tmp_path)
    assert loaded.cfg == cfg and loaded.regulator == cfg.meta.regulator
    theta0 = learner.prompt_params()["ctx"].detach()
    assert not torch.equal(loaded.theta["ctx"], theta0)  # θ moved
    torch.testing.assert_close(loaded.theta["ctx"], res.theta["ctx"])


class Killed(RuntimeError):
    pass


def test_killed_run_resumes_bit_identical(smoke, coop_setup, tmp_path):
    cfg, bb, learner, data = coop_setup
    cfg = dataclasses.replace(cfg, steps=5, ckpt_every=2)
    full = meta_train(smoke, cfg, tmp_path / "full", data=data, backbone=bb)

    def kill(step: int, _metrics: dict) -> None:
        if step == 3:  # after the step-2 checkpoint, before the next: step 3 must be replayed
            raise Killed

    with pytest.raises(Killed):
        meta_train(smoke, cfg, tmp_path / "resumed", data=data, backbone=bb, on_step=kill)
    assert json.loads((tmp_path / "resumed" / "ckpt" / "meta_state.json").read_text())["step"] == 2
    resumed = meta_train(smoke, cfg, tmp_path / "resumed", data=data, backbone=bb)
    assert resumed.summary["resumed_from"] == 2
    for k in full.theta:
        assert torch.equal(full.theta[k], resumed.theta[k])
    for k in full.phi:
        assert torch.equal(full.phi[k], resumed.phi[k])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "meta_log.csv"),
                                  pd.read_csv(tmp_path / "resumed" / "meta_log.csv"))


def test_corrupt_checkpoint_is_a_clear_error(smoke, coop_setup, tmp_path):
    cfg, bb, learner, data = coop_setup
    cfg = dataclasses.replace(cfg, steps=2, ckpt_every=1)
    meta_train(smoke, cfg, tmp_path, data=data, backbone=bb)
    tensors = next((tmp_path / "ckpt").glob("meta_state-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        meta_train(smoke, dataclasses.replace(cfg, steps=3), tmp_path, data=data, backbone=bb)


@pytest.mark.parametrize("variant", ["no_regulator", "no_shift", "loop"])
def test_ablation_switches_run(smoke, coop_setup, tmp_path, variant):
    cfg, bb, learner, _ = coop_setup
    change = {"no_regulator": dict(meta=dataclasses.replace(cfg.meta, regulate=False)),
              "no_shift": dict(tasks=TaskConfig(ways=3, shots=2, query=4, domain_shift=False)),
              "loop": dict(meta=dataclasses.replace(cfg.meta, vectorize=False))}[variant]
    cfg = dataclasses.replace(cfg, steps=2, **change)
    res = meta_train(smoke, cfg, tmp_path, backbone=bb, cache_dir=tmp_path / "feat")
    assert len(res.log) == 2 and np.isfinite(res.log.meta_loss).all()
    if variant == "no_regulator":
        assert load_meta_result(tmp_path).regulator is None


def test_supervised_tasks_from_a_labelled_dataset(smoke, coop_setup, tmp_path):
    _, bb, _, _ = coop_setup
    cfg = cfg_for(task_source="labelled", steps=2)
    res = meta_train(smoke, cfg, tmp_path, backbone=bb, cache_dir=tmp_path / "feat")
    assert res.summary["task_source"] == f"labelled:{smoke.source}" and len(res.log) == 2


@pytest.mark.parametrize("learner,opts", [("vpt", {}), ("joint", {}), ("coop", {"n_ctx": 2, "ctx_init": None})])
def test_other_learners_meta_train(smoke, coop_setup, tmp_path, learner, opts):
    """VPT+GRAM and UNIGRAM (joint 2+2) go through the prompted image tower; token sweep (Table 7)."""
    _, bb, _, _ = coop_setup
    cfg = cfg_for(learner, learner_cfg=opts, steps=1, tasks=TaskConfig(ways=2, shots=1, query=2))
    res = meta_train(smoke, cfg, tmp_path, backbone=bb, cache_dir=tmp_path / "feat")
    theta = load_meta_result(tmp_path).theta
    if learner == "vpt":
        assert set(theta) == {"vis_ctx_0"}
    elif learner == "joint":
        assert set(theta) == {"ctx", "vis_ctx_0"} and theta["ctx"].shape[0] == 2 and theta["vis_ctx_0"].shape[0] == 2
    else:
        assert theta["ctx"].shape[0] == 2
    assert np.isfinite(res.log.meta_loss).all() and np.isfinite(res.log.grad_cosine).all()


def test_vpt_task_loss_under_vmap_matches_loop(smoke, coop_setup):
    _, bb, _, _ = coop_setup
    cfg = cfg_for("vpt", tasks=TaskConfig(ways=2, shots=1, query=2))
    _, learner = build_meta_learner(smoke, cfg, bb)
    data = load_meta_data(smoke, cfg, bb, features=False)
    loss = TaskLoss(learner, data.pool.classnames, image_features=False)
    theta = {k: v.detach() for k, v in learner.prompt_params().items()}
    tasks = sample_tasks(data.pool, np.random.default_rng(0), 2)
    stacked = meta_batch(tasks, data.bank, True)
    with math_attention():
        batched = torch.vmap(loss, in_dims=(None, 0))(theta, stacked.support)
        looped = torch.stack([loss(theta, s) for s, _ in meta_batch(tasks, data.bank, False)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)


def test_tune_with_regulator_uses_the_hook(coop_setup):
    """Eq. 7 at test time: with W = 0, R(g) = 0.95 g, i.e. SGD at 0.95 x lr (momentum SGD is linear in g)."""
    from gramlib.tuning.train import TrainConfig, train_prompt

    cfg, bb, learner, data = coop_setup
    names = list(data.pool.classnames[:3])
    idx = np.concatenate([data.pool.members[c][0][:4] for c in range(3)])
    labels = torch.repeat_interleave(torch.arange(3), torch.as_tensor([min(4, len(data.pool.members[c][0])) for c in range(3)]))
    td = TrainData(ViewBank(data.bank[torch.as_tensor(idx)].unsqueeze(0), labels, True), names)
    theta_star = {k: v.detach().clone() + 0.01 for k, v in learner.prompt_params().items()}
    from gramlib.gram.regulator import init_regulator

    phi = init_regulator(theta_star, RegulatorConfig())
    tcfg = TrainConfig(epochs=2, batch_size=4, lr=0.01, warmup_epochs=0)
    tuned = tune_with_regulator(learner, theta_star, phi, td, tcfg, RegulatorConfig()).theta
    learner.load_prompt_params(theta_star)
    plain = train_prompt(learner, td, dataclasses.replace(tcfg, lr=0.0095)).theta
    torch.testing.assert_close(tuned["ctx"], plain["ctx"], rtol=1e-4, atol=1e-6)
    raw = tune_with_regulator(learner, theta_star, phi, td, tcfg, None).theta
    assert not torch.allclose(raw["ctx"], tuned["ctx"])
    assert regulator_hook(phi, None) is None


def test_params_yaml_variants():
    from gramlib.config import load_params

    for variant in load_params()["meta"]["variants"]:
        cfg = meta_train_config("mini", variant)
        assert cfg.steps >= 1
    for host in ("coop", "unigram"):
        assert meta_train_config("mini", f"{host}_no_regulator").meta.regulate is False
        assert meta_train_config("mini", f"{host}_no_domain_shift").tasks.domain_shift is False
        assert meta_train_config("mini", f"{host}_supervised").task_source == "labelled"
    assert meta_train_config("mini", "unigram").learner == "joint"
    assert meta_train_config("mini", "unigram_no_regulator").learner == "joint"
    assert meta_train_config("mini", "unigram_tokens_8").learner_cfg == {"n_ctx": 4, "n_vis": 4}
    assert meta_train_config("mini", "coop_tokens_6").learner_cfg == {"n_ctx": 6}
    assert meta_train_config("mini", "coop_tokens_6").learner_options() == {"n_ctx": 6, "ctx_init": None}  # Algorithm 1
    assert meta_train_config("mini", "coop_gram").learner_options() == {"n_ctx": 4, "ctx_init": None}  # = Table 7's 4 tokens
    # a profile's own settings for one variant come last: the mini image-side runs are cheaper
    assert meta_train_config("mini", "unigram").steps == 150 and meta_train_config("paper", "unigram").steps == 400
    assert meta_train_config("mini", "unigram").meta.meta_batch == 2
    assert meta_train_config("mini", "coop_gram").meta.meta_batch == 4
    with pytest.raises(ValueError, match="unknown meta-training variant"):
        meta_train_config("mini", "nope")


def test_profile_variant_override_of_an_unknown_variant_is_an_error():
    import copy

    from gramlib.config import load_params

    params = copy.deepcopy(load_params())
    params["profiles"]["mini"]["meta"]["variants"]["ghost"] = {"steps": 1}
    with pytest.raises(ValueError, match=r"profiles.mini.meta.variants: unknown variant\(s\) \['ghost'\]"):
        meta_train_config("mini", "coop_gram", params)


def test_pretrain_prompts_without_meta_learning(smoke, coop_setup, tmp_path):
    from gramlib.gram.pretrain_prompts import PretrainConfig, pretrain_prompts

    _, bb, learner, _ = coop_setup
    summary = pretrain_prompts(smoke, PretrainConfig(task_source="truth", epochs=1, max_items=200), tmp_path,
                               backbone=bb, cache_dir=tmp_path / "feat")
    assert summary["n_items"] == 200 and summary["n_classes"] >= 2
    res = load_meta_result(tmp_path)
    assert res.regulator is None and set(res.theta) == {"ctx"}


# --- Algorithm 1, line 1: where θ starts -----------------------------------------------------------

def test_initial_learner_options_follow_algorithm_1():
    from gramlib.gram.run_config import PAPER_N_CTX, initial_learner_options

    assert initial_learner_options("coop", {}, "random") == {"ctx_init": None, "n_ctx": PAPER_N_CTX}
    assert initial_learner_options("coop", {"n_ctx": 6}, "random") == {"ctx_init": None, "n_ctx": 6}
    assert initial_learner_options("joint", {"n_ctx": 2, "n_vis": 2}, "random") == {"n_ctx": 2, "n_vis": 2, "ctx_init": None}
    assert initial_learner_options("vpt", {"n_tokens": 4}, "random") == {"n_tokens": 4}  # random already
    assert initial_learner_options("coop", {}, "learner") == {}  # CoOp's own "a photo of a"
    assert initial_learner_options("coop", {"ctx_init": "a drawing of a"}, "random") == {"ctx_init": "a drawing of a"}
    with pytest.raises(ValueError, match="meta.theta_init"):
        initial_learner_options("coop", {}, "zeros")
    with pytest.raises(ValueError, match="meta.theta_init"):
        cfg_for(theta_init="photo")


def test_meta_training_starts_from_a_random_theta_by_default(smoke, coop_setup):
    """Default: θ0 ~ N(0, 0.02²) with the hand-crafted start's shape; theta_init="learner": exactly the token
    embeddings of "a photo of a" (the learner's own start), computed here from the tokenizer."""
    _, bb, _, _ = coop_setup
    _, rand = build_meta_learner(smoke, cfg_for(), bb)
    _, hand = build_meta_learner(smoke, cfg_for(theta_init="learner"), bb)
    r, h = rand.prompt_params()["ctx"].detach(), hand.prompt_params()["ctx"].detach()
    assert r.shape == h.shape == (4, h.shape[1])
    ids = bb.tokenizer(["a photo of a"])[0]
    emb = bb.model.token_embedding.weight[ids[1:5]].detach()
    torch.testing.assert_close(h, emb)
    assert abs(float(r.std()) - 0.02) < 0.004 and not torch.allclose(r, emb, atol=1e-3)
    # the same seed gives the same random start (the run's seed seeds it)
    _, again = build_meta_learner(smoke, cfg_for(), bb)
    torch.testing.assert_close(again.prompt_params()["ctx"].detach(), r)
