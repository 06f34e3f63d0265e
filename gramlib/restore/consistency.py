"""RESTORE's feature-shift consistency loss (eqs. 7-10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def feature_shift_consistency(vision: Tensor, text: Tensor, lambda_fs: float = 1.0) -> Tensor:
    """λ_fs·L_fs, the term eq. 10 adds to the cross-entropy: L_fs = Σ_l L_l^fs (eq. 9) with
    L_l^fs = MSE(‖Ω_l^v‖_F, ‖Ω_l^t‖_F) (eqs. 7-8).

    ``vision`` (L_v,) and ``text`` (L_t,) are per-layer norms, e.g. ``**feature_shift_norms(...)``.
    The MSE of two scalars is their squared difference. Towers of different depth (the mini profile:
    4 vision, 2 text blocks) are paired block by block from the input; the deeper tower's remaining
    blocks are unconstrained.
    """
    if vision.dim() != 1 or text.dim() != 1:
        raise ValueError(f"expected per-layer norms (L,), got shapes {tuple(vision.shape)} and {tuple(text.shape)}")
    n = min(vision.shape[0], text.shape[0])
    if n == 0:
        return torch.zeros((), device=vision.device, dtype=vision.dtype)
    return lambda_fs * F.mse_loss(vision[:n], text[:n].to(vision.dtype), reduction="sum")


def shift_discrepancy(vision: Tensor, text: Tensor) -> float:
    """Inter-modal feature-shift discrepancy of a trained model: L_fs (eq. 9) per paired block, i.e. the
    mean over the paired blocks of (‖Ω_l^v‖_F − ‖Ω_l^t‖_F)²; RESTORE's Figure 3 plots it against
    generalisation. Zero when both towers are untouched (zero-shot CLIP)."""
    n = min(vision.shape[0], text.shape[0])
    return float(feature_shift_consistency(vision, text, 1.0)) / n if n else 0.0


__all__ = ["feature_shift_consistency", "shift_discrepancy"]
