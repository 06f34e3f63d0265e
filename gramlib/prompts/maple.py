"""MaPLe: multi-modal prompt learning with vision prompts coupled to the language prompts (Khattak et al. 2023).

Language prompts as in IVLP (:mod:`gramlib.prompts.ivlp`): θ["ctx"] at the first text layer (from
``ctx_init``), θ["txt_ctx_i"] replacing the slot outputs at text block i < depth. The vision prompts
are *not* free parameters: layer i's are a learnable linear map of layer i's language prompts,
``F.linear(text_i, θ["proj_w_i"], θ["proj_b_i"])`` (MaPLe's V-L coupling function; one map per layer,
nn.Linear's initialisation), so a gradient on the image side also moves the text prompts. The same
``depth`` applies to both towers and is checked against each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import TextTower, Theta
from gramlib.prompts.cocoop import linear_init
from gramlib.prompts.ivlp import (
    DeepTextLearner,
    check_n_tokens,
    deep_text_prompts,
    init_deep_text_prompts,
    resolve_depth,
)
from gramlib.clip.towers import vision_layers
from gramlib.prompts.vpt import visual_width


@dataclass(frozen=True)
class MaPLeConfig:
    """``n_tokens`` per layer, ``depth`` of both towers (None: 9 capped at the shallower tower),
    ``ctx_init`` of the first text layer (None: random)."""

    n_tokens: int = 2
    depth: int | None = None
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02


def coupled_depth(clip_model: nn.Module, depth: int | None) -> int:
    """One depth valid for both towers (ValueError naming the tower that is too shallow)."""
    n_text, n_vis = TextTower.of(clip_model).n_layers, vision_layers(clip_model)
    if depth is None:
        return resolve_depth(None, min(n_text, n_vis), "depth", "shallower")
    resolve_depth(depth, n_text, "depth", "text")
    return resolve_depth(depth, n_vis, "depth", "image")


class MaPLe(DeepTextLearner):
    """θ = {ctx, txt_ctx_1…, proj_w_0…, proj_b_0…}; vision prompt i = proj_i(text prompt i)."""

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: MaPLeConfig | None = None) -> None:
        cfg = cfg or MaPLeConfig()
        check_n_tokens(cfg.n_tokens)
        depth = coupled_depth(clip_model, cfg.depth)
        super().__init__(clip_model, tokenizer, cfg.n_tokens, cfg.ctx_init, cfg.init_std)
        self.cfg = cfg
        self.depth = depth
        tower = TextTower.of(clip_model)
        for k, p in init_deep_text_prompts(tower, cfg.n_tokens, depth, cfg.init_std).items():
            self.theta[k] = p
        like = self.theta["ctx"]
        for i in range(depth):
            w, b = linear_init(visual_width(clip_model), tower.width, like)
            self.theta[f"proj_w_{i}"], self.theta[f"proj_b_{i}"] = nn.Parameter(w), nn.Parameter(b)

    def vision_prompts(self, theta: Theta) -> list[Tensor]:
        """Layer i's vision prompts = proj_i(layer i's language prompts) (MaPLe's coupling)."""
        text = [theta["ctx"], *deep_text_prompts(theta)]
        return [F.linear(t, theta[f"proj_w_{i}"], theta[f"proj_b_{i}"].squeeze(0)) for i, t in enumerate(text)]


__all__ = ["MaPLe", "MaPLeConfig", "coupled_depth"]
