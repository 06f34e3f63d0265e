"""The items tasks are drawn from: an item bank (features or images) aligned with a task pool.

The pool comes from CHC's pairs (the paper), the mini world's ground truth (an oracle) or a labelled
dataset (the supervised ablation); CoOp-type learners see CC3M image features computed once (the CHC
stage's cache entry), image-side learners (VPT, UNIGRAM) see image tensors gathered per step from a
:class:`~gramlib.data.pixel_bank.PixelBank` (decoded on demand under a memory budget, never the
whole corpus at once).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from gramlib.config import REPO, Profile
from gramlib.data.pixel_bank import DEFAULT_CACHE_BYTES, PixelBank
from gramlib.gram.run_config import MetaTrainConfig
from gramlib.gram.tasks import TaskPool, pool_from_dataset, pool_from_pairs, truth_pairs

@dataclass
class MetaData:
    """Items (features (N, D), or a :class:`PixelBank` of images (N, 3, H, W)) and the task pool whose
    positions index them."""

    bank: Tensor | PixelBank
    is_features: bool
    pool: TaskPool
    keys: list[str]
    source: str
    images: Sequence[Any] | None = None  # images decoded on access (for plots), same order as the bank


def load_pairs(profile: Profile, cfg: MetaTrainConfig) -> pd.DataFrame:
    """The table tasks are drawn from: CHC's pairs (default) or the mini world's ground truth."""
    if cfg.task_source == "truth":
        path = profile.root / "cc3m_truth.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: task_source='truth' needs a generated (mini/smoke) world")
        return truth_pairs(pd.read_parquet(path))
    path = Path(cfg.pairs_path) if cfg.pairs_path else profile.artifacts / "chc" / "pairs.parquet"
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run the CHC stage of {profile.name!r} first "
                                "(or set meta.task_source: truth for the oracle topics)")
    return pd.read_parquet(path)


class FileImages(Sequence):
    """Image files decoded on access (the labelled dataset's images for plots)."""

    def __init__(self, paths: Sequence[Any]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from gramlib.data.transforms import load_image

        return [load_image(p) for p in self.paths[i]] if isinstance(i, slice) else load_image(self.paths[i])


def load_meta_data(profile: Profile, cfg: MetaTrainConfig, backbone: Any, features: bool,
                   cache_dir: str | os.PathLike | None = None, keep_images: bool = False,
                   pixel_cache_bytes: int = DEFAULT_CACHE_BYTES) -> MetaData:
    """Bank + pool for ``cfg.task_source``; CC3M features share the CHC stage's cache entry.

    Image-side learners get a :class:`PixelBank` holding at most ``pixel_cache_bytes`` of transformed
    pixels (it changes memory and decode time, never a result).
    """
    from gramlib.clip.features import encode_images, eval_transform

    cache = Path(cache_dir) if cache_dir is not None else REPO / "cache" / "features"
    tf = eval_transform(backbone)
    if cfg.task_source == "labelled":
        from gramlib.data.coop import load_dataset

        name = cfg.labelled_dataset or profile.source
        ds = load_dataset(profile.root / profile.coop_dir, name)
        data = ds.split("train")
        pool = pool_from_dataset(ds, cfg.tasks, "train")
        paths = [d.impath for d in data]
        if features:
            bank = encode_images(backbone, paths, tf, cache, desc=f"{name} features")
        else:
            bank = PixelBank(paths, tf, pixel_cache_bytes)
        imgs = FileImages(paths) if keep_images else None
        return MetaData(bank, features, pool, [str(p) for p in paths], f"labelled:{name}", imgs)

    from gramlib.data.corpus import corpus_identity, load_corpus_shared

    pairs = load_pairs(profile, cfg)
    corpus = load_corpus_shared(profile.root / profile.cc3m_dir)
    where = {k: i for i, k in enumerate(corpus.keys)}
    missing = [k for k in pairs["key"].astype(str) if k not in where]
    if missing:
        raise ValueError(f"{len(missing)} pair key(s) (e.g. {missing[:3]}) are not in the shards of {profile.name!r}")
    rows = torch.as_tensor([where[k] for k in pairs["key"].astype(str)], dtype=torch.long)
    pool = pool_from_pairs(pairs, cfg.tasks, source=f"{cfg.task_source} pairs of {profile.name}")
    if features:
        bank = encode_images(backbone, corpus.images, tf, cache, identity=corpus_identity(corpus),  # == CHC's entry
                             desc="CC3M features")[rows]
    else:
        bank = PixelBank(corpus.images.take(rows.numpy()), tf, pixel_cache_bytes)
    imgs = corpus.images.take(rows.numpy()) if keep_images else None
    return MetaData(bank, features, pool, list(pairs["key"].astype(str)), cfg.task_source, imgs)
