"""Frozen image and text features with an on-disk cache keyed by (model, data, transform).

Prompt learners whose image tower is untouched by their parameters (CoOp) never need to run the
image tower again after this; the CoOp reference code recomputes it every step. A cache entry is
one ``.npy`` written atomically, so an interrupted extraction never leaves a half-written file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gramlib.clip.factory import Backbone
from gramlib.io import stable_hash, write_npy

log = logging.getLogger(__name__)


def data_identity(paths: Sequence[str | os.PathLike]) -> list:
    """Paths with size and modification time: cheap to compute, changes when a file is rewritten."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_file(cache_dir: str | os.PathLike, kind: str, key_parts: dict) -> Path:
    return Path(cache_dir) / kind / f"{stable_hash(key_parts)}.npy"


def _cached(path: Path) -> torch.Tensor | None:
    if path.exists():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError) as exc:
            log.warning("ignoring unreadable feature cache %s (%s); recomputing", path, exc)
    return None


@torch.no_grad()
def encode_images(backbone: Backbone, images: Sequence, transform: Callable, cache_dir: str | os.PathLike | None,
                  batch_size: int = 256, desc: str = "image features", identity: list | None = None) -> torch.Tensor:
    """L2-normalised image features (N, D) for image paths (or PIL images with ``identity`` given).

    ``identity`` names the data in the cache key when ``images`` are not files (e.g. shard samples).
    """
    from gramlib.data.transforms import load_image

    key = {"transform": repr(transform), "data": identity if identity is not None else data_identity(images)}

    def compute() -> torch.Tensor:
        model = backbone.model.eval()
        feats = []
        for s in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=len(images) < batch_size * 4):
            batch = [transform(load_image(im) if isinstance(im, (str, os.PathLike)) else im) for im in images[s:s + batch_size]]
            with backbone.autocast():
                z = model.encode_image(torch.stack(batch).to(backbone.device, non_blocking=True))
            feats.append(F.normalize(z.float(), dim=-1).cpu())
        return torch.cat(feats) if feats else torch.zeros(0, backbone.embed_dim)

    return cached_features(backbone, cache_dir, "image", key, compute)


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], cache_dir: str | os.PathLike | None,
                 batch_size: int = 512, desc: str = "text features", *, used_positions: bool = False) -> torch.Tensor:
    """L2-normalised text features (N, D) of raw strings.

    ``used_positions``: run the causal text tower over each batch's used positions only
    (:func:`gramlib.clip.pretrain.encode_text_used`: the same function, equal to float rounding), ~5x
    less work for short prompts on ViT-B/16's 77-token context. Off by default: CHC's caption features
    keep the computation its committed topics came from."""
    key = {"texts": stable_hash(list(texts), length=32), "n": len(texts)}

    def compute() -> torch.Tensor:
        from gramlib.clip.pretrain import encode_text_used, trims_text

        model = backbone.model.eval()
        trim = used_positions and trims_text(model)  # else (e.g. a Hugging Face text tower) the whole context
        feats = []
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, disable=len(texts) < batch_size * 4):
            tokens = backbone.tokenizer(list(texts[s:s + batch_size])).to(backbone.device)
            with backbone.autocast():
                z = encode_text_used(model, tokens) if trim else model.encode_text(tokens)
            feats.append(F.normalize(z.float(), dim=-1).cpu())
        return torch.cat(feats) if feats else torch.zeros(0, backbone.embed_dim)

    return cached_features(backbone, cache_dir, "text", key, compute)


def cached_features(backbone: Backbone, cache_dir: str | os.PathLike | None, kind: str, key: dict,
                    compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``'s float32 features, stored under ``cache_dir/kind`` by (weights, precision, ``key``):
    a later call with the same key loads the very tensor the first one computed (on the CPU)."""
    path = cache_file(cache_dir, kind, {"model": backbone.identity, **key, **_numerics(backbone)}) \
        if cache_dir is not None else None
    if path is not None and (hit := _cached(path)) is not None:
        return hit
    out = compute()
    if path is not None:
        write_npy(path, out.detach().float().cpu().numpy())
    return out


def _numerics(backbone: Backbone) -> dict:
    """bf16 features differ from fp32 ones: the precision is part of the cache key (fp32 keys unchanged)."""
    return {"precision": backbone.precision} if backbone.precision != "fp32" else {}


def eval_transform(backbone: Backbone) -> Callable:
    from gramlib.data.transforms import make_transform

    return make_transform(backbone.image_size, backbone.mean, backbone.std, train=False)
