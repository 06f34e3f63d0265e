"""IVLP: independent deep vision and language prompts (Rasheed et al. 2023; MaPLe's baseline; RESTORE §3.2).

Text: the first layer's prompts are CoOp's context θ["ctx"] (``n_tokens`` tokens after the start
token, initialised from ``ctx_init``, e.g. learned "a photo" + fixed "of a {class}."); block i of the
text tower (1 ≤ i < text depth) gets fresh tokens θ["txt_ctx_i"] that *replace* the slot outputs of
block i − 1 (MaPLe's convention). Vision: VPT-deep tokens θ["vis_ctx_i"] appended after the patch
tokens (RESTORE eq. 3). The two sets are unrelated: that is the "independent" of IVLP.

Depth: MaPLe and RESTORE prompt the first 9 of ViT-B/16's 12 layers in each tower. ``depth=None``
means that 9, capped at the tower's layer count (the mini profile's tiny CLIP has 2 text and 4
vision layers); an explicit depth larger than a tower's layer count raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import TextTower, Theta, normal_init
from gramlib.prompts.coop import TextContextLearner
from gramlib.clip.towers import TextPrompts, text_forward, vision_forward, vision_layers
from gramlib.prompts.vpt import init_visual_prompts, visual_prompts

DEFAULT_DEPTH = 9
"""Prompted layers per tower in MaPLe/RESTORE's ViT-B/16 recipe (of 12)."""


def check_n_tokens(n_tokens: int, name: str = "n_tokens") -> None:
    if n_tokens < 1:
        raise ValueError(f"{name} must be >= 1 (prompt tokens per layer), got {n_tokens}")


def resolve_depth(depth: int | None, n_layers: int, name: str, tower: str) -> int:
    """``depth`` checked against a tower of ``n_layers`` blocks; None: min(DEFAULT_DEPTH, n_layers)."""
    if depth is None:
        return min(DEFAULT_DEPTH, n_layers)
    if depth < 1:
        raise ValueError(f"{name} must be >= 1, got {depth}")
    if depth > n_layers:
        raise ValueError(f"{name}={depth} is larger than the {tower} tower's layer count ({n_layers})")
    return depth


def init_deep_text_prompts(tower: TextTower, n_tokens: int, depth: int, init_std: float) -> dict[str, nn.Parameter]:
    """θ entries txt_ctx_1 … txt_ctx_{depth-1}, each (n_tokens, d_text) ~ N(0, init_std²) (MaPLe)."""
    like = tower.token_embedding.weight
    return {f"txt_ctx_{i}": nn.Parameter(normal_init((n_tokens, tower.width), init_std, like)) for i in range(1, depth)}


def deep_text_prompts(theta: Theta) -> list[Tensor]:
    """θ's deep text prompts ordered by layer (txt_ctx_1, txt_ctx_2, …)."""
    keys = sorted((k for k in theta if k.startswith("txt_ctx_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [theta[k] for k in keys]


class DeepTextLearner(TextContextLearner):
    """A CoOp-style context plus deep text prompts; subclasses say what goes into the image tower."""

    caches_image_features = False
    caches_text_features = False

    def text_prompts(self, theta: Theta, classnames: Sequence[str], images: Tensor | None = None) -> TextPrompts:
        x, tokens = self.context_embeddings(theta["ctx"], classnames)
        return TextPrompts(x, tokens, self.plan.n_ctx, tuple(deep_text_prompts(theta)))

    def encode_text(self, theta: Theta, classnames: Sequence[str]) -> Tensor:
        out = text_forward(TextTower.of(self.clip), self.text_prompts(theta, classnames))
        return F.normalize(out.features, dim=-1)

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        return F.normalize(vision_forward(self.clip.visual, images, self.vision_prompts(theta)).features, dim=-1)


@dataclass(frozen=True)
class IVLPConfig:
    """``n_tokens`` per layer and ``depth`` per tower (None: 9 capped at the tower; ``text_depth`` /
    ``vision_depth`` / ``vision_n_tokens`` override one tower); ``ctx_init`` None: random text."""

    n_tokens: int = 2
    depth: int | None = None
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    text_depth: int | None = None
    vision_depth: int | None = None
    vision_n_tokens: int | None = None


class IVLP(DeepTextLearner):
    """θ = {ctx, txt_ctx_1…, vis_ctx_0…}: independent deep prompts in both towers."""

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: IVLPConfig | None = None) -> None:
        cfg = cfg or IVLPConfig()
        n_vis = cfg.n_tokens if cfg.vision_n_tokens is None else cfg.vision_n_tokens
        check_n_tokens(cfg.n_tokens)
        check_n_tokens(n_vis, "vision_n_tokens")
        tower = TextTower.of(clip_model)
        t_name = "text_depth" if cfg.text_depth is not None else "depth"
        v_name = "vision_depth" if cfg.vision_depth is not None else "depth"
        t_depth = resolve_depth(cfg.text_depth if cfg.text_depth is not None else cfg.depth,
                                tower.n_layers, t_name, "text")
        v_depth = resolve_depth(cfg.vision_depth if cfg.vision_depth is not None else cfg.depth,
                                vision_layers(clip_model), v_name, "image")
        super().__init__(clip_model, tokenizer, cfg.n_tokens, cfg.ctx_init, cfg.init_std)
        self.cfg = cfg
        self.text_depth, self.vision_depth = t_depth, v_depth
        for k, p in init_deep_text_prompts(tower, cfg.n_tokens, t_depth, cfg.init_std).items():
            self.theta[k] = p
        for k, p in init_visual_prompts(clip_model, n_vis, v_depth, cfg.init_std).items():
            self.theta[k] = p

    def vision_prompts(self, theta: Theta) -> list[Tensor]:
        return visual_prompts(theta)


__all__ = [
    "DEFAULT_DEPTH",
    "DeepTextLearner",
    "IVLP",
    "IVLPConfig",
    "check_n_tokens",
    "deep_text_prompts",
    "init_deep_text_prompts",
    "resolve_depth",
]
