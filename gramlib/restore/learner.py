"""RESTORE_m: MaPLe + feature-shift consistency loss (eqs. 7-10) + feature-shift-guided surgery (eq. 11).

θ = MaPLe's prompts and projections plus the two surgery blocks' weights (``surgery_v_*`` on the image
features x̃, ``surgery_t_*`` on the class text features w̃). The consistency loss reaches the training
loop through :meth:`logits_and_aux_loss` (the same forward pass gives the logits and the shifts).
``lambda_fs=0`` and ``surgery="none"`` reduce it to MaPLe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import TextTower, Theta, clip_logits
from gramlib.prompts.cocoop import embed_dim
from gramlib.prompts.maple import MaPLe, MaPLeConfig
from gramlib.clip.towers import TowerOutput, text_forward, vision_forward
from gramlib.restore.consistency import feature_shift_consistency
from gramlib.restore.feature_shift import image_shift, per_layer, text_shift
from gramlib.restore.surgery import SURGERY_MODES, apply_surgery, init_surgery, surgery_alpha


@dataclass(frozen=True)
class RestoreConfig:
    """MaPLe's prompts (``n_tokens``, ``depth``, ``ctx_init``), λ_fs of eq. 10 (the paper's 1), the
    surgery mode ("none" | "fixed" | "guided"), γ and β of eq. 11, the fixed mode's α, and the
    surgery's hidden width (None: 2·D).

    The paper gives no values for γ, β, the fixed α or the hidden width; ours: on the mini backbone
    Σ_l ‖Ω_l‖_F is about 15-25 per tower at initialisation, so γ = β = 0.01 gives α ≈ 0.2, and the
    fixed mode uses that α.
    """

    n_tokens: int = 2
    depth: int | None = None
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    lambda_fs: float = 1.0
    surgery: str = "guided"
    gamma: float = 0.01
    beta: float = 0.01
    alpha: float = 0.2
    surgery_hidden: int | None = None


class Restore(MaPLe):
    """θ = MaPLe's θ + {surgery_v_ln_w, surgery_v_ln_b, surgery_v_up, surgery_v_down, surgery_t_…}."""

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: RestoreConfig | None = None) -> None:
        cfg = cfg or RestoreConfig()
        if cfg.surgery not in SURGERY_MODES:
            raise ValueError(f"surgery must be one of {SURGERY_MODES}, got {cfg.surgery!r}")
        if cfg.lambda_fs < 0:
            raise ValueError(f"lambda_fs must be >= 0, got {cfg.lambda_fs}")
        super().__init__(clip_model, tokenizer, MaPLeConfig(cfg.n_tokens, cfg.depth, cfg.ctx_init, cfg.init_std))
        self.cfg = cfg  # type: ignore[assignment]
        if cfg.surgery != "none":
            dim = embed_dim(clip_model)
            hidden = cfg.surgery_hidden or 2 * dim
            for prefix in ("surgery_v", "surgery_t"):
                for k, p in init_surgery(prefix, dim, hidden, self.theta["ctx"]).items():
                    self.theta[k] = p

    # ---- towers with optional feature shift ------------------------------------------------------
    def _image_out(self, theta: Theta, images: Tensor, shift: bool) -> TowerOutput:
        if shift:
            return image_shift(self, theta, images)
        return vision_forward(self.clip.visual, images, self.vision_prompts(theta))

    def _text_out(self, theta: Theta, classnames: Sequence[str], shift: bool) -> TowerOutput:
        if shift:
            return text_shift(self, theta, classnames)
        return text_forward(TextTower.of(self.clip), self.text_prompts(theta, classnames))

    def _finish(self, theta: Theta, out: TowerOutput, prefix: str, coef: float) -> Tensor:
        """Surgery (eq. 11) on the tower's output features, then L2 normalisation."""
        x = out.features
        if self.cfg.surgery != "none":
            norms = per_layer(out) if out.shifts else None
            x = apply_surgery(x, surgery_alpha(self.cfg.surgery, norms, coef, self.cfg.alpha), theta, prefix)
        return F.normalize(x, dim=-1)

    @property
    def _guided(self) -> bool:
        return self.cfg.surgery == "guided"

    def surgery_strength(self, theta: Theta, images: Tensor, classnames: Sequence[str]) -> dict[str, float]:
        """How much the surgery changes each tower's output: mean over images (classes) of
        ‖α·Surgery(x̃)‖ / ‖x̃‖ (eq. 11); 0 without a surgery block. A diagnostic, not part of the loss."""
        if self.cfg.surgery == "none":
            return {"vision": 0.0, "text": 0.0}
        out = {}
        with torch.no_grad():
            for tower, res, prefix, coef in (("vision", self._image_out(theta, images, self._guided), "surgery_v", self.cfg.gamma),
                                             ("text", self._text_out(theta, classnames, self._guided), "surgery_t", self.cfg.beta)):
                x = res.features
                alpha = surgery_alpha(self.cfg.surgery, per_layer(res) if res.shifts else None, coef, self.cfg.alpha)
                delta = apply_surgery(x, alpha, theta, prefix) - x
                out[tower] = float((delta.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).mean())
        return out

    # ---- the interface ---------------------------------------------------------------------------
    def encode_text(self, theta: Theta, classnames: Sequence[str]) -> Tensor:
        return self._finish(theta, self._text_out(theta, classnames, self._guided), "surgery_t", self.cfg.beta)

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        return self._finish(theta, self._image_out(theta, images, self._guided), "surgery_v", self.cfg.gamma)

    def logits_and_aux_loss(
        self,
        theta: Theta,
        image_input: Tensor,
        classnames: Sequence[str],
        text_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits with the surgery and λ_fs·L_fs (eq. 10) of this batch's images and the classes."""
        if self.cfg.lambda_fs == 0:
            return super().logits_and_aux_loss(theta, image_input, classnames, text_features)
        if text_features is not None:
            raise ValueError("Restore cannot reuse text features: θ changes them")
        if image_input.dim() == 2:
            raise ValueError("Restore needs images: θ changes the image features")
        img_out = self._image_out(theta, image_input, shift=True)
        txt_out = self._text_out(theta, classnames, shift=True)
        logits = clip_logits(self.clip, self._finish(theta, img_out, "surgery_v", self.cfg.gamma),
                             self._finish(theta, txt_out, "surgery_t", self.cfg.beta))
        aux = feature_shift_consistency(per_layer(img_out).mean(0), per_layer(txt_out).mean(0), self.cfg.lambda_fs)
        return logits, aux


__all__ = ["Restore", "RestoreConfig"]
