"""RESTORE's feature shift (eq. 6): what the prompt tokens change in each transformer block's output.

    Ω_l^v = G_{l+1} − Φ_l^v(G_l),   [_, G_{l+1}] = Φ_l^v([T_l^v, G_l])          (eq. 6)
    Ω_l^t = F_{l+1} − Φ_l^t(F_l),   [_, F_{l+1}] = Φ_l^t([T_l^t, F_l])

How "without the prompt tokens" is formed (our reading of eq. 6): G_l is the input of block l *in the
prompted forward pass* with the prompt tokens T_l removed from the sequence; Φ_l(G_l) is the same
frozen block applied to that shorter sequence, and G_{l+1} is the prompted block's output at the same
(non-prompt) positions. Ω_l is thus the local effect of block l's prompt tokens (through attention,
the only place where tokens interact), not the drift accumulated from the zero-shot model: earlier
layers' prompts reach Ω_l only through G_l, which both terms share.

* T_l is whatever occupies the prompt positions at block l: fresh deep prompts (eq. 3; VPT-deep,
  IVLP, MaPLe) or the carried outputs of earlier prompts (eq. 2's [T_l, G_l]; CoOp, shallow VPT), so
  a shallow learner shifts every layer.
* Text: the prompt positions are the slots after the start token, where CoOp/IVLP/MaPLe put the
  learned context (RESTORE's [T^t, F] with F the hand-crafted words, class name and end token);
  padding after the end token is excluded from the norm (F = {t^1, …, t^m, c, t^eot} has none).
* Vision: the appended prompt tokens; G is the class and patch tokens.
* A tower that θ leaves alone (``caches_*_features``) has Ω = 0 exactly. Prompt tokens whose values
  are zero are still tokens (they take softmax mass), so their shift is *not* zero.

Norms: ‖Ω_l‖_F of each sample's (tokens × width) matrix, then averaged over the images of the batch
(vision) and over the class prompts (text; CoCoOp: over the (image, class) pairs), so neither the
batch size nor the number of classes sets the scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gramlib.prompts.base import PromptLearner, Theta
from gramlib.clip.towers import (
    BlockFn,
    DropFn,
    TextTower,
    TowerOutput,
    text_forward,
    vision_forward,
)


def block_shift_norm(block: BlockFn, x: Tensor, y: Tensor, drop: DropFn, valid: Tensor | None) -> Tensor:
    """‖Ω_l‖_F per sample (N,) of one block (eq. 6): y = Φ_l([T_l, G_l]) minus Φ_l(G_l)."""
    omega = drop(y) - block(drop(x))
    if valid is not None:
        omega = omega * drop(valid).unsqueeze(-1).to(omega.dtype)
    return torch.linalg.vector_norm(omega.to(torch.promote_types(omega.dtype, torch.float32)), dim=(1, 2))


def image_shift(learner: PromptLearner, theta: Theta, images: Tensor) -> TowerOutput:
    """Prompted image features (B, D, unnormalised) and ‖Ω_l^v‖_F per image for each block."""
    return vision_forward(learner.clip.visual, images, learner.vision_prompts(theta), shift=block_shift_norm)


def text_shift(
    learner: PromptLearner, theta: Theta, classnames: Sequence[str], images: Tensor | None = None
) -> TowerOutput:
    """Prompted text features (N, D, unnormalised) and ‖Ω_l^t‖_F per sequence for each block."""
    prompts = learner.text_prompts(theta, classnames, images)
    return text_forward(TextTower.of(learner.clip), prompts, shift=block_shift_norm)


def per_layer(out: TowerOutput) -> Tensor:
    """(N, L) norms of a :class:`TowerOutput` computed with a shift."""
    return torch.stack(out.shifts, dim=1)


def _n_vision_layers(learner: PromptLearner) -> int:
    transformer = getattr(learner.clip.visual, "transformer", None)
    return len(transformer.resblocks) if transformer is not None else 0


def feature_shift_norms(
    learner: PromptLearner, theta: Theta, images: Tensor, classnames: Sequence[str]
) -> dict[str, Tensor]:
    """Per-layer ‖Ω_l‖_F (eq. 6) of any learner: {"vision": (L_v,), "text": (L_t,)}, differentiable in θ.

    Averaged over the batch's images (vision) and over the classes (text), see the module docstring.
    """
    zeros = {"device": learner.device, "dtype": torch.float32}
    if learner.caches_image_features:  # θ never touches the image tower
        vision = torch.zeros(_n_vision_layers(learner), **zeros)
    else:
        vision = per_layer(image_shift(learner, theta, images)).mean(dim=0)
    if learner.caches_text_features:  # θ never touches the text tower
        text = torch.zeros(TextTower.of(learner.clip).n_layers, **zeros)
    else:
        text = per_layer(text_shift(learner, theta, classnames, images)).mean(dim=0)
    return {"vision": vision, "text": text}


__all__ = ["block_shift_norm", "feature_shift_norms", "image_shift", "per_layer", "text_shift"]
