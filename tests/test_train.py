"""Few-shot tuning loop (gramlib.tuning.train): recipe, gradient hook, checkpoints and exact resume.

Uses a tiny random CLIP and synthetic data so every test runs in about a second.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gramlib.tuning.inputs import TrainData, ViewBank, parse_policy, policy_scale
from gramlib.learners import build_learner
from gramlib.tuning.train import (
    TrainConfig,
    epoch_generator,
    evaluate,
    last_checkpoint,
    lr_at,
    train_prompt,
)
from tiny_openclip import build_tiny_clip

CLASSES = ["dog", "cat", "fire hydrant", "sports car"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(seed=0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % len(CLASSES)


def _coop(tiny):
    torch.manual_seed(0)
    return build_learner("coop", *tiny)


def _feature_data(learner, images) -> TrainData:
    x, y = images
    feats = learner.frozen_image_features(x)
    return TrainData(ViewBank(feats.unsqueeze(0), y, is_features=True), CLASSES)


def _pixel_data(learner, images) -> TrainData:
    x, y = images
    text = learner.frozen_text_features(CLASSES) if learner.caches_text_features else None
    return TrainData(ViewBank(x.unsqueeze(0), y, is_features=False), CLASSES, text)


CFG = TrainConfig(epochs=4, batch_size=8, lr=0.05, seed=1)


def test_lr_schedule_is_constant_warmup_then_cosine():
    cfg = TrainConfig(epochs=10, lr=0.002)
    assert lr_at(0, cfg) == 1e-5
    assert lr_at(1, cfg) == pytest.approx(0.001 * (1 + math.cos(math.pi / 10)))
    assert lr_at(9, cfg) < lr_at(5, cfg) < lr_at(1, cfg) < cfg.lr
    assert TrainConfig.for_learner("cocoop").batch_size == 1
    assert TrainConfig.for_learner("coop", lr=0.01).lr == 0.01
    with pytest.raises(ValueError, match="unknown method 'coopp'"):
        TrainConfig.for_learner("coopp")
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=1)


def test_epoch_generator_is_pure():
    a = torch.randperm(10, generator=epoch_generator(3, 2))
    b = torch.randperm(10, generator=epoch_generator(3, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randperm(10, generator=epoch_generator(3, 1)))


def test_training_lowers_loss_and_records_history(tiny, images):
    learner = _coop(tiny)
    data = _feature_data(learner, images)
    before = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    calls = []
    res = train_prompt(learner, data, CFG, eval_fn=lambda lrn, th, e: calls.append(e) or {"acc": evaluate(lrn, th, data)})
    assert calls == [1, 2, 3, 4]
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4] and "acc" in res.history[-1]
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert not torch.equal(before["ctx"], res.theta["ctx"])


def test_zero_grad_transform_leaves_theta_unchanged(tiny, images):
    learner = _coop(tiny)
    data = _feature_data(learner, images)
    before = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    seen = []

    def zero(grads):
        seen.append({k: float(g.norm()) for k, g in grads.items()})
        return {k: torch.zeros_like(g) for k, g in grads.items()}

    res = train_prompt(learner, data, CFG, grad_transform=zero)
    assert len(seen) == CFG.epochs * math.ceil(24 / CFG.batch_size)  # once per step
    assert all(s["ctx"] > 0 for s in seen)  # the hook saw real gradients
    assert torch.equal(res.theta["ctx"], before["ctx"])  # weight decay goes through the hook too


def test_grad_transform_scales_the_update(tiny, images):
    """A hook doubling the gradient equals doubling the learning rate (SGD is linear in the grad)."""
    runs = []
    for hook, lr in ((lambda g: {k: 2 * v for k, v in g.items()}, CFG.lr), (None, 2 * CFG.lr)):
        learner = _coop(tiny)
        cfg = TrainConfig(epochs=2, batch_size=8, lr=lr, warmup_epochs=0, seed=1)
        runs.append(train_prompt(learner, _feature_data(learner, images), cfg, grad_transform=hook).theta["ctx"])
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)


def test_bad_grad_transform_raises(tiny, images):
    learner = _coop(tiny)
    with pytest.raises(ValueError, match="same names"):
        train_prompt(learner, _feature_data(learner, images), CFG, grad_transform=lambda g: {})


def test_resume_after_kill_matches_uninterrupted_run(tiny, images, tmp_path):
    learner = _coop(tiny)
    data = _feature_data(learner, images)
    acc = lambda lrn, th, e: {"acc": evaluate(lrn, th, data)}  # noqa: E731
    full = train_prompt(learner, data, CFG, eval_fn=acc, ckpt_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def dies_at_3(lrn, th, e):
        if e == 3:  # killed during epoch 3 (after its update, before its checkpoint)
            raise Killed
        return acc(lrn, th, e)

    learner = _coop(tiny)  # a fresh process: fresh learner from the same initialisation
    with pytest.raises(Killed):
        train_prompt(learner, data, CFG, eval_fn=dies_at_3, ckpt_dir=tmp_path / "killed")
    assert last_checkpoint(tmp_path / "killed") == 1  # 0-based: epochs 1 and 2 are committed
    files = {p.name for p in (tmp_path / "killed").iterdir()} - {"tuning.json"}  # the commit record
    assert len(files) == 3 and all(f.startswith("tuning-step00000002-") for f in files)  # only the last set is kept

    torch.manual_seed(1234)  # scramble the global RNG: resume must restore what matters
    learner = _coop(tiny)
    resumed = train_prompt(learner, data, CFG, eval_fn=acc, ckpt_dir=tmp_path / "killed")
    assert resumed.resumed_from == 1 and full.resumed_from is None
    assert torch.equal(resumed.theta["ctx"], full.theta["ctx"])
    assert resumed.history[-1]["acc"] == full.history[-1]["acc"]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]

    # resuming a finished run is a no-op; another config in the same folder is refused
    again = train_prompt(_coop(tiny), data, CFG, ckpt_dir=tmp_path / "killed")
    assert torch.equal(again.theta["ctx"], full.theta["ctx"])
    with pytest.raises(ValueError, match="different run"):
        train_prompt(_coop(tiny), data, TrainConfig(epochs=5, batch_size=8, lr=0.05, seed=1),
                     ckpt_dir=tmp_path / "killed")


def test_cached_features_equal_recomputing_the_tower(tiny, images):
    """Policy "none": training on cached features is the same computation as on images."""
    thetas = []
    for make in (_feature_data, _pixel_data):
        learner = _coop(tiny)
        thetas.append(train_prompt(learner, make(learner, images), CFG).theta["ctx"])
    torch.testing.assert_close(thetas[0], thetas[1], rtol=1e-4, atol=1e-5)


def test_vpt_trains_on_pixels_with_cached_text(tiny, images):
    torch.manual_seed(0)
    learner = build_learner("vpt", *tiny)
    data = _pixel_data(learner, images)
    assert data.text_features is not None
    before = learner.prompt_params()["vis_ctx_0"].detach().clone()
    res = train_prompt(learner, data, TrainConfig(epochs=2, batch_size=8, lr=0.5, seed=1))
    assert not torch.equal(before, res.theta["vis_ctx_0"])
    with pytest.raises(ValueError, match="needs images"):  # VPT cannot take cached image features
        learner.logits(res.theta, F.normalize(torch.randn(2, 64), dim=-1), CLASSES)


def test_bad_inputs(tiny, images):
    learner = build_learner("zeroshot", *tiny)
    with pytest.raises(ValueError, match="no prompt parameters"):
        train_prompt(learner, _pixel_data(learner, images), CFG)
    for bad in ("aug", "aug:0", "augment:3", "", 3, "aug:3:0", "aug:3:0.0", "aug:3:1.5", "aug:3:"):
        with pytest.raises(ValueError, match="augmentation policy"):
            parse_policy(bad)
    assert parse_policy("none") == 0 and parse_policy("aug:5") == 5 and parse_policy("aug:5:0.5") == 5
    assert policy_scale("aug:5") == (0.08, 1.0) and policy_scale("aug:5:0.5") == (0.5, 1.0)  # CoCoOp's 0.08
    assert policy_scale("aug:2:1") == (1.0, 1.0)
    with pytest.raises(ValueError, match="views must be"):
        ViewBank(torch.zeros(1, 3, 8), torch.zeros(4, dtype=torch.long), is_features=True)


def test_one_recipe_for_every_learner():
    """GRAM §4.1: every method follows CoCoOp's epochs (10) and schedule; only batch size and lr are a
    learner's own (RESTORE §4.1 likewise trains 10 epochs base-to-novel)."""
    from gramlib.tuning.train import LEARNER_DEFAULTS

    recipes = {n: TrainConfig.for_learner(n).to_dict() for n in LEARNER_DEFAULTS}
    shared = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("batch_size", "lr")}
    for name, r in recipes.items():
        assert {k: r[k] for k in shared} == shared, name
    assert shared["epochs"] == 10 and shared["warmup_epochs"] == 1


def test_reading_a_suite_config_imports_neither_torch_nor_open_clip():
    """Every table notebook reads the suite's configuration (recipe, augmentation grammar): that must not
    cost the ~7 s of importing torch and open_clip on 2 cores (gramlib.tuning.recipe is torch-free)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from gramlib.experiments.spec import suite_config\n"
            "cfg = suite_config('smoke')\n"
            "assert cfg.augment and cfg.train, cfg\n"
            "from gramlib.tuning.recipe import TrainConfig, parse_policy\n"
            "assert TrainConfig.for_learner('coop').lr == 0.002 and parse_policy('aug:3:0.5') == 3\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_recipe_names_are_the_same_objects_in_train_and_inputs():
    from gramlib.tuning import inputs, recipe, train

    assert train.TrainConfig is recipe.TrainConfig and train.LEARNER_DEFAULTS is recipe.LEARNER_DEFAULTS
    assert train.lr_at is recipe.lr_at and inputs.parse_policy is recipe.parse_policy


def _count_text_passes(monkeypatch, learner) -> list[int]:
    calls = [0]
    real = learner.encode_text

    def counted(theta, classnames, *a, **kw):
        calls[0] += 1
        return real(theta, classnames, *a, **kw)

    monkeypatch.setattr(learner, "encode_text", counted)
    return calls


@pytest.mark.parametrize("name", ["coop", "maple", "ivlp"])
def test_prediction_runs_the_text_tower_once_and_equals_the_per_batch_logits(tiny, images, monkeypatch, name):
    """Evaluation under a fixed θ: one text pass for all image batches; the labels are those of eq. 1's
    logits computed batch by batch with their own text pass (the reference, written out here)."""
    from gramlib.tuning.train import class_features, predict

    torch.manual_seed(0)
    learner = build_learner(name, *tiny)
    theta = {k: v.detach() + 0.3 * torch.randn_like(v) for k, v in learner.prompt_params().items()}
    data = _feature_data(learner, images) if learner.caches_image_features else _pixel_data(learner, images)
    x = data.bank.views[0]
    with torch.no_grad():
        reference = torch.cat([learner.logits(theta, x[s:s + 5], CLASSES).argmax(-1) for s in range(0, len(x), 5)])
    calls = _count_text_passes(monkeypatch, learner)
    got = predict(learner, theta, data, batch_size=5)
    assert calls[0] == 1  # 24 images in 5 batches: before, 5 text passes
    assert torch.equal(got, reference)
    shared = class_features(learner, theta, data)
    calls[0] = 0
    assert torch.equal(predict(learner, theta, data, batch_size=5, text=shared), reference) and calls[0] == 0


def test_prediction_with_image_conditioned_text_keeps_one_pass_per_batch(tiny, images, monkeypatch):
    """CoCoOp's class features depend on the image (its meta-net): nothing to share across batches."""
    from gramlib.tuning.train import class_features, predict

    torch.manual_seed(0)
    learner = build_learner("cocoop", *tiny)
    data = _feature_data(learner, images)
    theta = {k: v.detach() for k, v in learner.prompt_params().items()}
    assert class_features(learner, theta, data) is None
    with pytest.raises(ValueError, match="depend on the image"):
        learner.logits_under(theta, data.bank.views[0][:2], torch.zeros(len(CLASSES), 64))
    with torch.no_grad():
        reference = learner.logits(theta, data.bank.views[0], CLASSES).argmax(-1)
    calls = _count_text_passes(monkeypatch, learner)
    assert torch.equal(predict(learner, theta, data, batch_size=5), reference) and calls[0] == 5


def test_a_template_learner_moved_to_another_template_tokenizes_the_new_sentences(tiny):
    """The token memo is keyed by the sentences: evaluating a zero-shot learner with a target's template
    after its own (same class names) must not reuse the first template's tokens."""
    learner = build_learner("zeroshot", *tiny)
    first = learner.tokenize(CLASSES).clone()
    learner.template = "a drawing of a {}."
    moved = learner.tokenize(CLASSES)
    fresh = build_learner("zeroshot", *tiny, template="a drawing of a {}.").tokenize(CLASSES)
    assert torch.equal(moved, fresh) and not torch.equal(moved, first)
