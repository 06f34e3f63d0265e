"""Drop noisy web image-text pairs before clustering.

Web captions often do not describe their image (CC3M-like data has ~10 % such pairs in the mini
world).  Such pairs would put images under the wrong topic word, so CHC first scores each pair by
the cosine similarity of the backbone's image and caption features and drops the worst ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FilterConfig", "l2_normalize", "pair_scores", "filter_pairs", "filter_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterConfig:
    """``rule``: ``"absolute"`` drops score < threshold; ``"percentile"`` drops the pairs below the
    ``threshold``-th percentile of the scores (threshold in [0, 100]); ``"none"`` keeps all."""

    rule: str = "percentile"
    threshold: float = 10.0


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (idempotent, so callers may pass normalised features)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def pair_scores(image_features: np.ndarray, caption_features: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (image_i, caption_i) pair -- the diagonal, never the full matrix."""
    img, txt = np.asarray(image_features), np.asarray(caption_features)
    if img.ndim != 2 or txt.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"image/caption features must be 2-D with equal shapes, got {img.shape} and {txt.shape}")
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        raise ValueError("image/caption features contain NaN or inf")
    return np.einsum("ij,ij->i", l2_normalize(img), l2_normalize(txt))


def filter_pairs(scores: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """Boolean keep-mask for the given similarity scores under ``cfg``."""
    scores = np.asarray(scores, dtype=np.float64)
    if cfg.rule == "none":
        keep = np.ones(len(scores), dtype=bool)
    elif cfg.rule == "absolute":
        keep = scores >= cfg.threshold
    elif cfg.rule == "percentile":
        if not 0.0 <= cfg.threshold <= 100.0:
            raise ValueError(f"percentile threshold must be in [0, 100], got {cfg.threshold}")
        cut = np.percentile(scores, cfg.threshold) if len(scores) else 0.0
        keep = scores >= cut
    else:
        raise ValueError(f"unknown filter rule {cfg.rule!r} (absolute | percentile | none)")
    log.info("noise filter (%s, %s): kept %d of %d pairs", cfg.rule, cfg.threshold, int(keep.sum()), len(keep))
    return keep


def filter_report(keep_mask: np.ndarray, is_mismatched: np.ndarray) -> dict[str, float]:
    """Precision/recall of *removal* against known mismatched pairs, and the share of good pairs kept.

    precision = |removed ∩ mismatched| / |removed|, recall = |removed ∩ mismatched| / |mismatched|,
    good_kept = |kept ∩ good| / |good|.  An undefined ratio (nothing removed, no mismatched pair)
    is NaN, never a made-up 0 or 1.
    """
    keep = np.asarray(keep_mask, dtype=bool)
    bad = np.asarray(is_mismatched, dtype=bool)
    if keep.shape != bad.shape:
        raise ValueError(f"keep_mask {keep.shape} and is_mismatched {bad.shape} differ in shape")
    removed = ~keep
    tp = int((removed & bad).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "n_pairs": int(keep.size),
        "n_removed": int(removed.sum()),
        "n_mismatched": int(bad.sum()),
        "precision": ratio(tp, int(removed.sum())),
        "recall": ratio(tp, int(bad.sum())),
        "good_kept": ratio(int((keep & ~bad).sum()), int((~bad).sum())),
    }
