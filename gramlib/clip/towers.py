"""The frozen CLIP towers, run block by block with prompt tokens spliced in (shallow or deep).

The forward follows open_clip's ``CLIP.encode_text`` and ``VisionTransformer.forward`` (open_clip 3.x)
line for line and calls the frozen sub-modules (``visual.conv1``, ``resblocks``, ``ln_*``, ...), so a
replaced patch embedding (the mini profile's convolutional stem) works unchanged. The loop runs the
blocks one at a time because deep prompts (VPT-deep, IVLP, MaPLe) replace tokens *between* blocks.

Prompt conventions (the MaPLe/IVLP ones):

* text: prompt *slots* are the positions 1..n right after the start token. The layer-0 prompts are
  already in ``TextPrompts.embeddings``; ``deep[i]`` replaces the slots at the input of block i + 1.
  Blocks past the deep prompts keep the previous block's slot outputs.
* vision: ``prompts[0]`` (M, width) is appended after the patch tokens before ``ln_pre``;
  ``prompts[i]`` (i ≥ 1) replaces the previous block's prompt outputs at the input of block i. Prompt
  outputs are dropped before pooling.

``shift`` (optional) is called once per block with the block, its input and output *with* the prompt
tokens, a function that drops the prompt tokens from a (N, T, ...) tensor, and the valid-token mask
(text: up to the end token; vision: None). It returns one value per sample (N,); blocks of a tower
without prompt tokens get zeros. RESTORE's feature shift (eq. 6, :mod:`gramlib.restore.feature_shift`)
is computed through this hook, so the towers need not know about it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

BlockFn = Callable[[Tensor], Tensor]
DropFn = Callable[[Tensor], Tensor]
ShiftFn = Callable[[BlockFn, Tensor, Tensor, DropFn, "Tensor | None"], Tensor]
"""shift(block, x_in, x_out, drop_prompts, valid) -> (N,), see the module docstring."""


def _in_functorch_transform() -> bool:
    return torch._C._functorch.peek_interpreter_stack() is not None


@contextmanager
def differentiable_attention() -> Iterator[None]:
    """Keep ``nn.MultiheadAttention`` off its fused inference fast path while differentiating.

    With frozen weights, the fast path (``torch._native_multi_head_attention``) is taken whenever no
    *autograd* input requires grad, which is the case inside ``torch.func.grad``/``vmap``: there it
    has no batching rule (vmap over tasks fails with an internal assert) and it bypasses the SDPA
    backend chosen for second-order gradients. Plain ``torch.no_grad`` inference keeps the fast path.
    """
    if not (torch.is_grad_enabled() or _in_functorch_transform()):
        yield
        return
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


@dataclass(frozen=True)
class TextTower:
    """The text-side modules of an open_clip model (``CLIP`` keeps them flat, ``CustomTextCLIP``
    under ``.text``), resolved once so the forward below reads like open_clip's."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Tensor | nn.Module | None
    attn_mask: Tensor | None
    pool_type: str
    eos_id: int | None

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.transformer.resblocks)

    @staticmethod
    def of(clip_model: nn.Module) -> TextTower:
        m = getattr(clip_model, "text", None)
        if m is not None:  # CustomTextCLIP -> TextTransformer
            if getattr(m, "cls_emb", None) is not None or not hasattr(m, "token_embedding"):
                raise NotImplementedError("prompt learners need a CLIP-style causal text tower")
            pool, eos = m.pool_type, getattr(m, "eos_id", None)
        else:
            m = clip_model
            pool, eos = m.text_pool_type, getattr(m, "text_eos_id", None)
        return TextTower(
            token_embedding=m.token_embedding,
            positional_embedding=m.positional_embedding,
            transformer=m.transformer,
            ln_final=m.ln_final,
            text_projection=m.text_projection,
            attn_mask=m.attn_mask,
            pool_type=pool,
            eos_id=eos,
        )


@dataclass(frozen=True)
class TextPrompts:
    """The text tower's input under θ: embeddings (N, L, d) with the layer-0 prompts in slots
    1..``n_slots``, token ids (N, L) for pooling, and ``deep[i]`` ((n_slots, d) or (N, n_slots, d))
    replacing the slots at the input of block i + 1. ``n_slots = 0``: no text prompts."""

    embeddings: Tensor
    tokens: Tensor
    n_slots: int = 0
    deep: tuple[Tensor, ...] = ()


@dataclass(frozen=True)
class TowerOutput:
    """Unnormalised features (N, D) and, when a ``shift`` was given, one (N,) tensor per block."""

    features: Tensor
    shifts: tuple[Tensor, ...] = ()


def _run_block(block: nn.Module, x: Tensor, batch_first: bool, attn_mask: Tensor | None = None) -> Tensor:
    n = x.shape[1]
    mask = None if attn_mask is None else attn_mask[:n, :n]  # causal mask of the (possibly shorter) sequence
    if batch_first:
        return block(x, attn_mask=mask)
    return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)


def valid_text_tokens(tower: TextTower, tokens: Tensor) -> Tensor:
    """(N, L) bool: the start token to the end token inclusive (padding after it is not text)."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    if tower.pool_type == "argmax":
        end = tokens.argmax(dim=-1)
    elif tower.eos_id is not None:
        end = (tokens == tower.eos_id).int().argmax(dim=-1)
    else:
        return torch.ones_like(tokens, dtype=torch.bool)
    return pos.unsqueeze(0) <= end.unsqueeze(1)


def used_positions(tower: TextTower, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(x, tokens) without the positions after the batch's last end-of-text token.

    The text tower is causal and pools at the end token, so those positions never reach a feature,
    a gradient or (being padding) a feature-shift norm: dropping them computes the same function on
    fewer positions (a CoOp prompt uses ~10 of the mini context's 24; ViT-B/16's 77 even fewer).
    Kept whole for non-causal towers, other pooling, and inside torch.func transforms (no
    data-dependent shapes there; the meta-training loss trims its class prompts itself).
    """
    if tower.attn_mask is None or tower.pool_type not in ("argmax", "eos") or _in_functorch_transform():
        return x, tokens
    end = tokens.argmax(dim=-1) if tower.pool_type == "argmax" else (tokens == tower.eos_id).int().argmax(dim=-1)
    keep = int(end.max()) + 1
    return (x[:, :keep], tokens[:, :keep]) if keep < tokens.shape[1] else (x, tokens)


def text_forward(tower: TextTower, prompts: TextPrompts, shift: ShiftFn | None = None) -> TowerOutput:
    """Text features (N, D), unnormalised, of :class:`TextPrompts` (deep prompts included)."""
    n = prompts.n_slots
    x, tokens = used_positions(tower, prompts.embeddings, prompts.tokens)
    blocks = list(tower.transformer.resblocks)
    if len(prompts.deep) >= len(blocks):
        raise ValueError(f"{len(prompts.deep) + 1} text prompt layers but the text tower has {len(blocks)} blocks")
    if prompts.deep and n < 1:
        raise ValueError("deep text prompts need prompt slots (n_slots >= 1)")
    cast = tower.transformer.get_cast_dtype()
    x = x.to(cast) + tower.positional_embedding[: x.shape[1]].to(cast)
    batch_first = getattr(tower.transformer, "batch_first", True)
    valid = valid_text_tokens(tower, tokens.to(x.device)) if shift is not None else None

    def drop(t: Tensor) -> Tensor:  # remove slots 1..n
        return torch.cat([t[:, :1], t[:, 1 + n :]], dim=1)

    shifts = []
    with differentiable_attention():
        for i, blk in enumerate(blocks):
            if 1 <= i <= len(prompts.deep):
                d = prompts.deep[i - 1].to(x.dtype)
                d = d.unsqueeze(0).expand(x.shape[0], -1, -1) if d.dim() == 2 else d
                x = torch.cat([x[:, :1], d, x[:, 1 + n :]], dim=1)

            def run(t: Tensor, blk: nn.Module = blk) -> Tensor:
                return _run_block(blk, t, batch_first, tower.attn_mask)

            y = run(x)
            if shift is not None:
                shifts.append(shift(run, x, y, drop, valid) if n > 0 else x.new_zeros(x.shape[0]))
            x = y
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Module) else x @ proj
    return TowerOutput(x, tuple(shifts))


def encode_text_embeddings(tower: TextTower, x: Tensor, tokens: Tensor) -> Tensor:
    """Text features (N, D), unnormalised, from token *embeddings* x (N, L, d).

    Same as open_clip ``CLIP.encode_text`` after its ``token_embedding`` lookup; ``tokens`` (N, L)
    are only used for pooling (argmax-EOT / EOS), so learned vectors may replace any embedding.
    """
    return text_forward(tower, TextPrompts(x, tokens)).features


def vision_forward(
    visual: nn.Module, images: Tensor, prompts: Sequence[Tensor] = (), shift: ShiftFn | None = None
) -> TowerOutput:
    """Image features (B, D), unnormalised, with visual prompt tokens (module docstring conventions)."""
    if not hasattr(visual, "class_embedding"):
        raise TypeError("visual prompts need an open_clip VisionTransformer image tower")
    blocks = list(visual.transformer.resblocks)
    if len(prompts) > len(blocks):
        raise ValueError(f"{len(prompts)} prompt layers but the image tower has {len(blocks)} blocks")
    x = visual.conv1(images)  # (B, width, grid, grid)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid**2, width)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    n_keep = x.shape[1]
    if len(prompts) > 0:
        p0 = prompts[0].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x, p0], dim=1)
    x = visual.ln_pre(x)
    batch_first = getattr(visual.transformer, "batch_first", True)

    def drop(t: Tensor) -> Tensor:  # remove the appended prompt tokens
        return t[:, :n_keep]

    shifts = []
    with differentiable_attention():
        for i, blk in enumerate(blocks):
            if 0 < i < len(prompts):
                pi = prompts[i].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :n_keep], pi], dim=1)

            def run(t: Tensor, blk: nn.Module = blk) -> Tensor:
                return _run_block(blk, t, batch_first)

            y = run(x)
            if shift is not None:
                shifts.append(shift(run, x, y, drop, None) if len(prompts) > 0 else x.new_zeros(x.shape[0]))
            x = y
    x = x[:, :n_keep]
    if hasattr(visual, "_pool"):
        pooled, _ = visual._pool(x)
    else:  # pragma: no cover - older open_clip
        pooled = visual.ln_post(x[:, 0])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return TowerOutput(pooled, tuple(shifts))


def encode_image_with_prompts(
    visual: nn.Module, images: Tensor, prompts: Sequence[Tensor] = ()
) -> Tensor:
    """Image features (B, D), unnormalised, with visual prompt tokens (VPT). With no prompts this is
    exactly ``visual(images)``."""
    return vision_forward(visual, images, prompts).features


def vision_layers(clip_model: nn.Module) -> int:
    """Number of blocks of the image tower."""
    return len(clip_model.visual.transformer.resblocks)


__all__ = [
    "ShiftFn",
    "TextPrompts",
    "TextTower",
    "TowerOutput",
    "differentiable_attention",
    "encode_image_with_prompts",
    "encode_text_embeddings",
    "text_forward",
    "valid_text_tokens",
    "vision_forward",
    "vision_layers",
]
