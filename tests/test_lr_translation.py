"""The temperature-matched lr (suite.lr_translation, gramlib.tuning.lr_translation.lr_factor): its premise, its
arithmetic, and that every tuning run trains with it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gramlib.learners import build_learner
from gramlib.tuning.lr_translation import CLIP_LOGIT_SCALE, lr_factor, translate_lr
from gramlib.tuning.recipe import TrainConfig, lr_at
from tiny_openclip import build_tiny_clip

CLASSES = ["dog", "cat", "fire hydrant", "sports car"]


def _context_grad(scale: float) -> torch.Tensor:
    """d CE / d context of a CoOp learner on the tiny random CLIP whose exp(logit_scale) is ``scale``."""
    model, tok = build_tiny_clip(seed=0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(scale))
    torch.manual_seed(0)
    learner = build_learner("coop", model, tok)
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in learner.prompt_params().items()}
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % len(CLASSES)
    loss = F.cross_entropy(learner.logits(theta, learner.frozen_image_features(x), CLASSES), y)
    (g,) = torch.autograd.grad(loss, list(theta.values()))
    return g


def test_the_gradient_on_a_prompt_is_proportional_to_the_logit_scale():
    """The premise: at near-uniform probabilities (small logit scales) doubling the scale doubles the
    cross-entropy's gradient on the context, so the same lr moves a cooler backbone's prompts less."""
    def departure(scale: float) -> float:  # |g(2s) - 2 g(s)| / |g(2s)|
        g1, g2 = _context_grad(scale), _context_grad(2 * scale)
        assert g1.norm() > 0
        return float((g2 - 2 * g1).norm() / g2.norm())

    coarse, fine = departure(0.01), departure(0.001)
    assert fine < 2e-3
    # the softmax's own change is what departs from proportionality: it vanishes linearly with the scale
    assert 5 < coarse / fine < 20


def test_lr_factor_and_translate_lr():
    assert lr_factor("none", 18.5) == 1.0
    assert lr_factor("temperature", CLIP_LOGIT_SCALE) == 1.0  # CLIP itself: the published lr
    assert lr_factor("temperature", 18.5) == pytest.approx(100 / 18.5)
    with pytest.raises(ValueError, match="suite.lr_translation"):
        lr_factor("logit", 18.5)
    with pytest.raises(ValueError, match="logit scale"):
        lr_factor("temperature", 0.0)
    cfg = TrainConfig.for_learner("coop", epochs=10)
    assert translate_lr(cfg, "none", 18.5) is cfg
    hot = translate_lr(cfg, "temperature", 25.0)  # factor 4: every epoch of the schedule, warm-up included
    assert hot.lr == pytest.approx(0.008) and hot.warmup_lr == pytest.approx(4e-5)
    assert dataclasses.replace(hot, lr=cfg.lr, warmup_lr=cfg.warmup_lr) == cfg
    for e in range(cfg.epochs):
        assert lr_at(e, hot) == pytest.approx(4 * lr_at(e, cfg))


def test_run_unit_trains_with_the_translated_lr(smoke, tmp_path, monkeypatch):
    from gramlib.experiments import protocols

    env = protocols.load_env(smoke, feature_cache=tmp_path / "features")
    seen: list[TrainConfig] = []
    real = protocols.train_prompt

    def spy(learner, data, cfg, **kw):
        seen.append(cfg)
        return real(learner, data, cfg, **kw)

    monkeypatch.setattr(protocols, "train_prompt", spy)
    base, targets = protocols.unit_data(env, "base2new", smoke.datasets[1], 1, 1)
    for tr in ("none", "temperature"):
        protocols.run_unit(env, "base2new", "CoOp", 1, 1, base, targets, learner_name="coop",
                           train={"epochs": 2, "lr": 0.002}, lr_translation=tr)
    scale = float(env.backbone.model.logit_scale.exp())
    assert seen[0].lr == pytest.approx(0.002)
    assert seen[1].lr == pytest.approx(0.002 * CLIP_LOGIT_SCALE / scale) and seen[1].lr != seen[0].lr
