"""CoCoOp: CoOp's context plus an instance-conditional bias from a meta-net.

t_m(x) = t_m + π(x), π = Linear-ReLU-Linear(f_I(x)) (Zhou et al., CVPR 2022). The meta-net weights
are part of θ (flattened: meta_w1, meta_b1, meta_w2, meta_b2, biases as (1, n) so every θ tensor is
2-D), so GRAM's regulator and meta-gradient see them like the context. Text features depend on the
image, so only image features are cacheable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import TextPrompts, TextTower, Theta, clip_logits, frozen_encode_image
from gramlib.prompts.coop import TextContextLearner


@dataclass(frozen=True)
class CoCoOpConfig:
    """As :class:`CoOpConfig`; ``meta_hidden`` None: embed_dim // 16 (CoCoOp's reduction)."""

    n_ctx: int | None = None
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    class_token_position: str = "end"
    meta_hidden: int | None = None


def linear_init(n_out: int, n_in: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """nn.Linear's default initialisation, bias as (1, n_out)."""
    lin = nn.Linear(n_in, n_out).to(device=like.device, dtype=like.dtype)
    return lin.weight.detach().clone(), lin.bias.detach().clone().unsqueeze(0)


def meta_net(theta: Theta, image_features: Tensor) -> Tensor:
    """π(x) (B, d_text) = W2 · ReLU(W1 · f + b1) + b2, pure in θ."""
    h = F.relu(F.linear(image_features, theta["meta_w1"], theta["meta_b1"].squeeze(0)))
    return F.linear(h, theta["meta_w2"], theta["meta_b2"].squeeze(0))


class CoCoOp(TextContextLearner):
    """Conditional context optimisation; θ = {ctx, meta_w1, meta_b1, meta_w2, meta_b2}."""

    caches_image_features = True
    caches_text_features = False
    image_conditioned_text = True

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: CoCoOpConfig | None = None) -> None:
        cfg = cfg or CoCoOpConfig()
        super().__init__(clip_model, tokenizer, cfg.n_ctx, cfg.ctx_init, cfg.init_std, cfg.class_token_position)
        self.cfg = cfg
        ctx = self.theta["ctx"]
        d_text = ctx.shape[1]
        d_img = embed_dim(clip_model)
        hidden = cfg.meta_hidden or max(1, d_img // 16)
        w1, b1 = linear_init(hidden, d_img, ctx)
        w2, b2 = linear_init(d_text, hidden, ctx)
        for k, v in {"meta_w1": w1, "meta_b1": b1, "meta_w2": w2, "meta_b2": b2}.items():
            self.theta[k] = nn.Parameter(v)

    def encode_text(
        self, theta: Theta, classnames: Sequence[str], image_features: Tensor | None = None
    ) -> Tensor:
        """(B, C, D) text features conditioned on normalised ``image_features`` (B, D_img).

        Without image features CoCoOp has no defined class features, so this raises.
        """
        if image_features is None:
            raise ValueError("CoCoOp text features are conditioned on the image: pass image_features")
        pi = meta_net(theta, image_features.to(theta["meta_w1"].dtype))  # (B, d_text)
        ctx = theta["ctx"].unsqueeze(0) + pi.unsqueeze(1).to(theta["ctx"].dtype)  # (B, M, d_text)
        return self.context_text_features(ctx, classnames)

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        return frozen_encode_image(self.clip, images)

    def text_prompts(self, theta: Theta, classnames: Sequence[str], images: Tensor | None = None) -> TextPrompts:
        """One sequence per (image, class): the context t_m + π(x) of each image (B·C sequences)."""
        if images is None:
            raise ValueError("CoCoOp text prompts are conditioned on the image: pass images")
        img = frozen_encode_image(self.clip, images)
        ctx = theta["ctx"].unsqueeze(0) + meta_net(theta, img.to(theta["meta_w1"].dtype)).unsqueeze(1)
        x, tokens = self.context_embeddings(ctx.to(theta["ctx"].dtype), classnames)
        return TextPrompts(x, tokens, self.plan.n_ctx)

    def logits(
        self,
        theta: Theta,
        image_input: Tensor,
        classnames: Sequence[str],
        text_features: Tensor | None = None,
    ) -> Tensor:
        if text_features is not None:
            raise ValueError("CoCoOp cannot reuse text features: θ and the image change them")
        img = self._image_features(theta, image_input)
        return clip_logits(self.clip, img, self.encode_text(theta, classnames, image_features=img))


def embed_dim(clip_model: nn.Module) -> int:
    """Output width D of the image tower (input of the meta-net)."""
    visual = clip_model.visual
    if isinstance(getattr(visual, "output_dim", None), int):
        return int(visual.output_dim)
    proj = getattr(visual, "proj", None)
    if isinstance(proj, Tensor):
        return int(proj.shape[1])
    tp = TextTower.of(clip_model).text_projection
    if isinstance(tp, Tensor):
        return int(tp.shape[1])
    raise ValueError("cannot infer the CLIP embedding dimension")


__all__ = ["CoCoOp", "CoCoOpConfig", "meta_net"]
