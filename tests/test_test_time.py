"""Test time of GRAM (eq. 7 with θ*, φ*) through the real few-shot loop, against a hand computation.

The regulator here is *not* at its initialisation (random W^γ, W^β, b^γ, b^β), so R^φ(g) is neither a
scaled g nor g: a mistake in how the loop feeds the gradient to the hook (weight decay, momentum, the
schedule) or in eqs. 5-6 shows up as a different θ.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from gramlib.gram.regulator import RegulatorConfig, init_regulator
from gramlib.gram.test_time import tune_with_regulator
from gramlib.learners import build_learner
from gramlib.tuning.inputs import TrainData, ViewBank
from gramlib.tuning.train import TrainConfig
from tiny_openclip import build_tiny_clip

CLASSES = ["dog", "cat", "fire hydrant", "sports car"]


def _random_phi(theta: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    phi = init_regulator(theta, RegulatorConfig())
    return {k: (0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)) for k, v in phi.items()}


def _hand_eq7(learner, theta0: dict, phi: dict, feats, labels, cfg: TrainConfig, eps: float) -> torch.Tensor:
    """θ after ``cfg.epochs`` full-batch steps: SGD with momentum on R^φ(∇L + wd·θ), eqs. 5-7 by hand."""
    theta = theta0["ctx"].detach().clone()
    buf = None
    w_g, b_g, w_b, b_b = (phi[f"ctx.{f}"] for f in ("W_gamma", "b_gamma", "W_beta", "b_beta"))
    for epoch in range(cfg.epochs):
        t = theta.clone().requires_grad_(True)
        loss = F.cross_entropy(learner.logits({"ctx": t}, feats, CLASSES).float(), labels)
        (g,) = torch.autograd.grad(loss, t)
        g = g + cfg.weight_decay * theta  # decay is part of the gradient the regulator sees
        rms = torch.sqrt((g ** 2).mean() + eps)
        x = g / rms
        gamma = torch.tanh(x @ w_g.T + b_g)  # eq. 5, W acting on the width of each token
        beta = torch.tanh(x @ w_b.T + b_b)
        g_hat = gamma * g + rms * beta  # eq. 6 in the gradient's own units
        buf = g_hat if buf is None else cfg.momentum * buf + g_hat
        lr = cfg.warmup_lr if epoch < cfg.warmup_epochs else 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
        theta = theta - lr * buf  # eq. 7 (with SGD's momentum)
    return theta


def test_a_learned_regulator_through_the_real_loop_is_eq7_by_hand():
    clip, tok = build_tiny_clip(seed=0)
    torch.manual_seed(0)
    learner = build_learner("coop", clip, tok)
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(12, 3, 32, 32, generator=gen), torch.arange(12) % len(CLASSES)
    feats = learner.frozen_image_features(images)
    data = TrainData(ViewBank(feats.unsqueeze(0), labels, is_features=True), CLASSES)
    theta_star = {k: v.detach().clone() + 0.05 for k, v in learner.prompt_params().items()}
    phi = _random_phi(theta_star, seed=3)
    reg = RegulatorConfig()
    cfg = TrainConfig(epochs=3, batch_size=len(labels), lr=0.5, warmup_epochs=1, warmup_lr=0.05, weight_decay=0.01,
                      seed=1)

    expected = _hand_eq7(learner, theta_star, phi, feats, labels, cfg, reg.norm_eps)
    got = tune_with_regulator(learner, theta_star, phi, data, cfg, reg).theta["ctx"]

    moved = (expected - theta_star["ctx"]).norm()
    assert moved > 1e-3  # the steps did something measurable
    # float32 and the loop's per-epoch shuffle (another summation order of the batch mean): ~1e-6 apart
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # and the comparison can tell: leaving out any one ingredient of the hand computation misses by more
    for wrong in (dict(cfg=replace(cfg, weight_decay=0.0)), dict(cfg=replace(cfg, momentum=0.0)),
                  dict(cfg=replace(cfg, warmup_epochs=0)), dict(eps=1.0)):
        off = _hand_eq7(learner, theta_star, phi, feats, labels, wrong.get("cfg", cfg), wrong.get("eps", reg.norm_eps))
        assert (off - expected).abs().max() > 1e-4, wrong
    # the regulator matters: the raw gradient through the same loop lands elsewhere
    raw = tune_with_regulator(learner, theta_star, phi, data, cfg, None).theta["ctx"]
    assert (raw - expected).norm() > 0.05 * moved
