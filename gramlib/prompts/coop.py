"""CoOp: M learnable context vectors before the class-name tokens (eq. 2).

T̂_i = [t_1, …, t_M, c_i]. The sentence "X X … X {class}." is tokenised once per class list; the
embeddings of the M placeholders are replaced by θ["ctx"], everything else (start token, class
name, full stop, end token) stays the frozen word embedding, as in CoOp's reference code. With
``ctx_init="a photo of a"`` the initial prompt is therefore exactly "a photo of a {class}.".

When ``n_ctx`` is smaller than the token count of ``ctx_init`` only the first ``n_ctx`` tokens are
learned and the remaining words stay fixed text (the MaPLe/IVLP convention used by UNIGRAM's 2+2
prompts: learned "a photo", fixed "of a {class}.").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.prompts.base import (
    PromptLearner,
    TextPrompts,
    TextTower,
    Theta,
    clean_classname,
    count_tokens,
    encode_text_embeddings,
    frozen_encode_image,
    normal_init,
)

PLACEHOLDER = "X"


@dataclass(frozen=True)
class CoOpConfig:
    """``n_ctx`` M (None: the token count of ``ctx_init``); ``ctx_init`` None: N(0, init_std²)."""

    n_ctx: int | None = None
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    class_token_position: str = "end"


@dataclass(frozen=True)
class ContextPlan:
    """How the text context is laid out: M learned tokens, then fixed words, then the class."""

    n_ctx: int
    init_text: str | None  # the words whose embeddings initialise θ["ctx"] (None: random)
    fixed_text: str  # words kept as frozen text between the context and the class name


def plan_context(tokenizer: object, n_ctx: int | None, ctx_init: str | None) -> ContextPlan:
    """Resolve (n_ctx, ctx_init) into a :class:`ContextPlan`; ValueError on inconsistent settings."""
    if ctx_init is None or not ctx_init.strip():
        if n_ctx is None:
            raise ValueError("give n_ctx when ctx_init is None (random initialisation)")
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        return ContextPlan(n_ctx, None, "")
    words = ctx_init.replace("_", " ").split()
    cum = [0]
    for w in words:
        cum.append(cum[-1] + count_tokens(tokenizer, w) - 2)
    total = cum[-1]
    m = total if n_ctx is None else n_ctx
    if m < 1:
        raise ValueError(f"n_ctx must be >= 1, got {m}")
    if m > total:
        raise ValueError(f"n_ctx={m} exceeds the {total} tokens of ctx_init {ctx_init!r}")
    if m not in cum:
        raise ValueError(f"n_ctx={m} does not end on a word boundary of ctx_init {ctx_init!r} (token counts {cum[1:]})")
    k = cum.index(m)
    return ContextPlan(m, " ".join(words[:k]), " ".join(words[k:]))


class TextContextLearner(PromptLearner):
    """Shared machinery of learners with a CoOp-style text context θ["ctx"] (M, d_text)."""

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: object,
        n_ctx: int | None,
        ctx_init: str | None,
        init_std: float = 0.02,
        class_token_position: str = "end",
    ) -> None:
        super().__init__(clip_model, tokenizer)
        if class_token_position != "end":
            raise ValueError(f"only class_token_position='end' is implemented, got {class_token_position!r}")
        plan = plan_context(tokenizer, n_ctx, ctx_init)
        if count_tokens(tokenizer, " ".join([PLACEHOLDER] * plan.n_ctx)) != plan.n_ctx + 2:
            raise ValueError(f"placeholder {PLACEHOLDER!r} is not a single token for this tokenizer")
        self.plan = plan
        tower = TextTower.of(clip_model)
        w = tower.token_embedding.weight
        if plan.init_text is None:
            ctx = normal_init((plan.n_ctx, tower.width), init_std, like=w)
        else:
            ids = tokenizer([plan.init_text], context_length=tower.context_length)  # type: ignore[operator]
            with torch.no_grad():
                ctx = tower.token_embedding(ids.to(w.device))[0, 1 : 1 + plan.n_ctx].clone()
        self.theta["ctx"] = nn.Parameter(ctx)

    @property
    def n_prompt_tokens(self) -> int:
        fixed = count_tokens(self.tokenizer, self.plan.fixed_text) - 2 if self.plan.fixed_text else 0
        return self.plan.n_ctx + fixed + 1  # + the full stop

    def prompt_texts(self, classnames: Sequence[str]) -> list[str]:
        head = " ".join([PLACEHOLDER] * self.plan.n_ctx + ([self.plan.fixed_text] if self.plan.fixed_text else []))
        return [f"{head} {clean_classname(c)}." for c in classnames]

    def context_embeddings(self, ctx: Tensor, classnames: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token embeddings with ``ctx`` in slots 1..M and their token ids: (M, d) -> (C, L, d), (C, L);
        (B, M, d) -> (B·C, L, d), (B·C, L) (image-major)."""
        tower = TextTower.of(self.clip)
        tokens = self.tokenize(classnames).to(tower.token_embedding.weight.device)
        if ctx.dim() == 2:
            return self.splice_context(ctx, tokens), tokens
        emb = tower.token_embedding(tokens)  # (C, L, d), frozen
        m = self.plan.n_ctx
        prefix, suffix = emb[:, :1], emb[:, 1 + m :]
        n_cls = emb.shape[0]
        ctx = ctx.to(emb.dtype)
        b = ctx.shape[0]
        x = torch.cat(
            [
                prefix.unsqueeze(0).expand(b, -1, -1, -1),
                ctx.unsqueeze(1).expand(-1, n_cls, -1, -1),
                suffix.unsqueeze(0).expand(b, -1, -1, -1),
            ],
            dim=2,
        ).reshape(b * n_cls, emb.shape[1], emb.shape[2])
        return x, tokens.repeat(b, 1)

    def splice_context(self, ctx: Tensor, tokens: Tensor) -> Tensor:
        """Token embeddings of pre-tokenised prompts (C, L) with ``ctx`` (M, d) in slots 1..M: (C, L, d).

        The tensor-only core of :meth:`context_embeddings`, for callers that index a token table with
        tensors (GRAM's meta-training stacks tasks as tensors to vmap them).
        """
        emb = TextTower.of(self.clip).token_embedding(tokens)  # (C, L, d), frozen
        m = self.plan.n_ctx
        ctx = ctx.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
        return torch.cat([emb[:, :1], ctx, emb[:, 1 + m :]], dim=1)

    def token_text_features(self, ctx: Tensor, tokens: Tensor) -> Tensor:
        """Normalised text features (C, D) of pre-tokenised prompts under context ``ctx`` (M, d)."""
        return F.normalize(encode_text_embeddings(TextTower.of(self.clip), self.splice_context(ctx, tokens), tokens), dim=-1)

    def context_text_features(self, ctx: Tensor, classnames: Sequence[str]) -> Tensor:
        """Normalised text features for context ``ctx``: (M, d) -> (C, D); (B, M, d) -> (B, C, D)."""
        x, tokens = self.context_embeddings(ctx, classnames)
        feats = F.normalize(encode_text_embeddings(TextTower.of(self.clip), x, tokens), dim=-1)
        return feats if ctx.dim() == 2 else feats.reshape(ctx.shape[0], len(classnames), -1)

    def text_prompts(self, theta: Theta, classnames: Sequence[str], images: Tensor | None = None) -> TextPrompts:
        """θ["ctx"] in the slots after the start token (shallow: no deep text prompts)."""
        x, tokens = self.context_embeddings(theta["ctx"], classnames)
        return TextPrompts(x, tokens, self.plan.n_ctx)


class CoOp(TextContextLearner):
    """Context Optimisation (eq. 2): θ = {"ctx": (M, d_text)}; the image tower is untouched."""

    caches_image_features = True
    caches_text_features = False

    def __init__(self, clip_model: nn.Module, tokenizer: object, cfg: CoOpConfig | None = None) -> None:
        cfg = cfg or CoOpConfig()
        super().__init__(clip_model, tokenizer, cfg.n_ctx, cfg.ctx_init, cfg.init_std, cfg.class_token_position)
        self.cfg = cfg

    def encode_text(self, theta: Theta, classnames: Sequence[str]) -> Tensor:
        return self.context_text_features(theta["ctx"], classnames)

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        return frozen_encode_image(self.clip, images)


__all__ = ["CoOp", "CoOpConfig", "ContextPlan", "TextContextLearner", "plan_context"]
