"""The tuning recipe's lrs on a backbone of another temperature (``suite.lr_translation``).

Eq. 1 multiplies every cosine by the logit scale, so the cross-entropy's gradient on a prompt is proportional
to it (``tests/test_lr_translation.py`` checks this against the gradients themselves). The published lrs were
tuned on CLIP ViT-B/16, whose ``exp(logit_scale)`` is 100; on the mini profile's tiny CLIP (18.5) they move
the prompts about 5x less per step. Kept out of :mod:`gramlib.tuning.recipe` because meta-training does not
translate its steps (its outer steps are Adam's, invariant to the gradient's scale; its inner α and the prompt
pre-training's lr are this project's own), so its runs' code fingerprint stays as it was.
"""

from __future__ import annotations

import dataclasses

from gramlib.tuning.recipe import TrainConfig

CLIP_LOGIT_SCALE = 100.0  # exp(logit_scale) of CLIP ViT-B/16 (openai): where the published lrs were tuned
LR_TRANSLATIONS = ("none", "temperature")


def lr_factor(translation: str, logit_scale: float) -> float:
    """The factor on every lr of the recipe: 1 for ``"none"`` (the published lr), ``CLIP_LOGIT_SCALE /
    logit_scale`` for ``"temperature"`` (CLIP's step size on this backbone; 1 on CLIP itself)."""
    if translation == "none":
        return 1.0
    if translation == "temperature":
        if not logit_scale > 0:
            raise ValueError(f"lr translation 'temperature': the backbone's logit scale must be > 0, got {logit_scale}")
        return CLIP_LOGIT_SCALE / float(logit_scale)
    raise ValueError(f"suite.lr_translation must be one of {LR_TRANSLATIONS}, got {translation!r}")


def translate_lr(cfg: TrainConfig, translation: str, logit_scale: float) -> TrainConfig:
    """``cfg`` with its lr and warm-up lr scaled by :func:`lr_factor` (the whole schedule moves together)."""
    f = lr_factor(translation, logit_scale)
    return cfg if f == 1.0 else dataclasses.replace(cfg, lr=cfg.lr * f, warmup_lr=cfg.warmup_lr * f)


__all__ = ["CLIP_LOGIT_SCALE", "LR_TRANSLATIONS", "lr_factor", "translate_lr"]
