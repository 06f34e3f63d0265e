"""RESTORE's surgery block (eq. 11): a feature-shift-guided residual adapter on each tower's output.

    x̃ ← α_v·Surgery(x̃) + x̃,  w̃_i ← α_t·Surgery(w̃_i) + w̃_i,  Surgery(x) = ReLU(LN(x)·W_up)·W_down
    α_v = γ Σ_l ‖Ω_l^v‖_F,  α_t = β Σ_l ‖Ω_l^t‖_F                                        (eq. 11)

Parameters live in θ (2-D, so GRAM's regulator and the training loop treat them like prompts): LN's
weight and bias (1, D), W_up (h, D) and W_down (D, h) in ``F.linear`` layout, no biases (eq. 11 has
none). W_down starts at zero, so at initialisation the block is the identity for any α and RESTORE
starts from MaPLe. Modes (Table 5's ablation): "none" (no block), "fixed" (α a constant),
"guided" (α from the feature shift, per image and per class, detached: α is a control signal, and
letting the cross-entropy raise the feature shift to strengthen the adapter would reward the very
drift the block is meant to correct).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SURGERY_MODES = ("none", "fixed", "guided")


def init_surgery(prefix: str, dim: int, hidden: int, like: Tensor) -> dict[str, nn.Parameter]:
    """θ entries ``{prefix}_ln_w``, ``_ln_b`` (1, D), ``_up`` (h, D) (nn.Linear's init), ``_down`` (D, h) = 0."""
    kw = {"device": like.device, "dtype": like.dtype}
    up = torch.empty(hidden, dim, **kw)
    nn.init.kaiming_uniform_(up, a=math.sqrt(5))
    return {
        f"{prefix}_ln_w": nn.Parameter(torch.ones(1, dim, **kw)),
        f"{prefix}_ln_b": nn.Parameter(torch.zeros(1, dim, **kw)),
        f"{prefix}_up": nn.Parameter(up),
        f"{prefix}_down": nn.Parameter(torch.zeros(dim, hidden, **kw)),
    }


def surgery(x: Tensor, theta: dict[str, Tensor], prefix: str) -> Tensor:
    """Surgery(x) = ReLU(LN(x)·W_up)·W_down (eq. 11), x (N, D)."""
    w, b = theta[f"{prefix}_ln_w"].squeeze(0), theta[f"{prefix}_ln_b"].squeeze(0)
    h = F.layer_norm(x, (x.shape[-1],), w.to(x.dtype), b.to(x.dtype))
    return F.linear(F.relu(F.linear(h, theta[f"{prefix}_up"].to(x.dtype))), theta[f"{prefix}_down"].to(x.dtype))


def apply_surgery(x: Tensor, alpha: Tensor | float, theta: dict[str, Tensor], prefix: str) -> Tensor:
    """x + α·Surgery(x) (eq. 11); α a scalar or one value per row (N,). α = 0 returns x unchanged."""
    if isinstance(alpha, Tensor) and alpha.dim() == 1:
        alpha = alpha.unsqueeze(1)
    return x + alpha * surgery(x, theta, prefix)


def surgery_alpha(mode: str, shift_norms: Tensor | None, coef: float, fixed: float) -> Tensor | float:
    """α of eq. 11: "guided" coef·Σ_l ‖Ω_l‖_F per row of ``shift_norms`` (N, L), detached;
    "fixed" the constant ``fixed``; "none" 0."""
    if mode == "none":
        return 0.0
    if mode == "fixed":
        return fixed
    if mode == "guided":
        if shift_norms is None:
            raise ValueError("guided surgery needs the feature-shift norms")
        return coef * shift_norms.detach().sum(dim=1)
    raise ValueError(f"surgery must be one of {SURGERY_MODES}, got {mode!r}")


__all__ = ["SURGERY_MODES", "apply_surgery", "init_surgery", "surgery", "surgery_alpha"]
