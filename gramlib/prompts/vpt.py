"""Visual Prompt Tuning (§3.1, "Visual Prompt Tuning"; Jia et al. 2022) on CLIP's image tower.

Shallow (depth 1): M learnable tokens appended after the patch tokens at the input of the vision
transformer. Deep (depth k): block i < k gets fresh tokens θ["vis_ctx_i"] that replace the previous
block's prompt outputs. The text side is the frozen hand-crafted template, so class text features
are cacheable and the image features are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import PromptLearner, Theta, encode_image_with_prompts, normal_init
from gramlib.prompts.zeroshot import DEFAULT_TEMPLATE, TemplateText, check_template


@dataclass(frozen=True)
class VPTConfig:
    """``n_tokens`` M per layer; ``depth`` layers with prompts (1 shallow, None all = deep)."""

    n_tokens: int = 4
    depth: int | None = 1
    init_std: float = 0.02
    template: str = DEFAULT_TEMPLATE


def visual_width(clip_model: nn.Module) -> int:
    visual = clip_model.visual
    if not hasattr(visual, "class_embedding"):
        raise TypeError("visual prompts need an open_clip VisionTransformer image tower")
    return int(visual.class_embedding.shape[-1])


def vision_depth(clip_model: nn.Module) -> int:
    return len(clip_model.visual.transformer.resblocks)


def init_visual_prompts(
    clip_model: nn.Module, n_tokens: int, depth: int | None, init_std: float
) -> dict[str, nn.Parameter]:
    """θ entries vis_ctx_0 … vis_ctx_{depth-1}, each (M, width) ~ N(0, init_std²)."""
    n_layers = vision_depth(clip_model)
    depth = n_layers if depth is None else depth
    if n_tokens < 1:
        raise ValueError(f"VPT needs at least one prompt token, got n_tokens={n_tokens}")
    if not 1 <= depth <= n_layers:
        raise ValueError(f"VPT depth must be in [1, {n_layers}], got {depth}")
    like = clip_model.visual.class_embedding
    width = visual_width(clip_model)
    return {f"vis_ctx_{i}": nn.Parameter(normal_init((n_tokens, width), init_std, like)) for i in range(depth)}


def visual_prompts(theta: Theta) -> list[Tensor]:
    """θ's visual prompt tensors ordered by layer."""
    keys = sorted((k for k in theta if k.startswith("vis_ctx_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [theta[k] for k in keys]


class VPT(TemplateText, PromptLearner):
    """VPT-shallow / VPT-deep; θ = {vis_ctx_0, …} each (M, width_visual)."""

    caches_image_features = False
    caches_text_features = True

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: VPTConfig | None = None) -> None:
        super().__init__(clip_model, tokenizer)
        self.cfg = cfg or VPTConfig()
        check_template(self.cfg.template)
        self.template = self.cfg.template
        for k, p in init_visual_prompts(clip_model, self.cfg.n_tokens, self.cfg.depth, self.cfg.init_std).items():
            self.theta[k] = p

    def encode_text(self, theta: Theta, classnames: Sequence[str]) -> Tensor:
        return self.template_text_features(classnames)

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        return F.normalize(encode_image_with_prompts(self.clip.visual, images, visual_prompts(theta)), dim=-1)

    def vision_prompts(self, theta: Theta) -> list[Tensor]:
        return visual_prompts(theta)


__all__ = ["VPT", "VPTConfig", "init_visual_prompts", "visual_prompts"]
