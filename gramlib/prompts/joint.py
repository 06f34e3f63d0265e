"""Joint vision-language prompts: UNIGRAM's parameterisation (§3.3, "Universal GRAM").

Text context (CoOp, eq. 2; default 2 tokens initialised from "a photo", followed by the fixed words
"of a {class}.") plus shallow visual prompts (VPT; default 2 tokens), as in IVLP. θ touches both
towers, so nothing is cacheable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import Theta, encode_image_with_prompts
from gramlib.prompts.coop import TextContextLearner
from gramlib.prompts.vpt import init_visual_prompts, visual_prompts


@dataclass(frozen=True)
class JointConfig:
    """Text context (n_ctx, ctx_init) and visual prompts (n_vis tokens, vis_depth layers)."""

    n_ctx: int | None = 2
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    n_vis: int = 2
    vis_depth: int | None = 1
    vis_init_std: float = 0.02


class JointPrompt(TextContextLearner):
    """θ = {ctx: (n_ctx, d_text), vis_ctx_0: (n_vis, d_visual), …}."""

    caches_image_features = False
    caches_text_features = False

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: JointConfig | None = None) -> None:
        cfg = cfg or JointConfig()
        super().__init__(clip_model, tokenizer, cfg.n_ctx, cfg.ctx_init, cfg.init_std)
        self.cfg = cfg
        for k, p in init_visual_prompts(clip_model, cfg.n_vis, cfg.vis_depth, cfg.vis_init_std).items():
            self.theta[k] = p

    def encode_text(self, theta: Theta, classnames: Sequence[str]) -> Tensor:
        return self.context_text_features(theta["ctx"], classnames)

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        return F.normalize(encode_image_with_prompts(self.clip.visual, images, visual_prompts(theta)), dim=-1)

    def vision_prompts(self, theta: Theta) -> list[Tensor]:
        return visual_prompts(theta)


__all__ = ["JointConfig", "JointPrompt"]
