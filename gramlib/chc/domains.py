"""Visual domain clustering (§3.2): split every semantic topic into U image-feature domains.

GRAM samples each class's support set from a single domain and the query set from all domains, to
simulate train/test domain shift (§3.3); these domains come from per-topic k-means on the frozen
backbone's L2-normalised image features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from .noise_filter import l2_normalize

__all__ = ["DomainConfig", "domains_for_size", "cluster_domains"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainConfig:
    """``n_domains`` = U.  A topic with fewer than U pairs gets U' = max(1, n // min_domain_size)
    domains (``small_topic="shrink"``) or one domain (``small_topic="single"``)."""

    n_domains: int = 3
    min_domain_size: int = 5
    small_topic: str = "shrink"  # "shrink" | "single"
    n_init: int = 10
    seed: int = 0


def domains_for_size(n: int, cfg: DomainConfig) -> int:
    """Number of domains for a topic of ``n`` pairs (the small-topic rule documented on DomainConfig)."""
    if cfg.n_domains < 1 or cfg.min_domain_size < 1:
        raise ValueError("n_domains and min_domain_size must be >= 1")
    if n >= cfg.n_domains:
        return cfg.n_domains
    if cfg.small_topic == "single":
        return 1
    if cfg.small_topic == "shrink":
        return max(1, min(n, n // cfg.min_domain_size))
    raise ValueError(f"unknown small_topic rule {cfg.small_topic!r} (shrink | single)")


def cluster_domains(image_features: np.ndarray, topic_ids: np.ndarray, cfg: DomainConfig) -> np.ndarray:
    """Domain id per pair (0..U'-1 inside its topic); pairs with topic -1 get domain -1.

    k-means is seeded per topic with ``cfg.seed + topic_id`` so results do not depend on the order
    in which topics are processed.  Domain ids are renumbered by decreasing size (0 = largest).
    """
    feats = l2_normalize(image_features)
    topic_ids = np.asarray(topic_ids)
    if len(feats) != len(topic_ids):
        raise ValueError(f"{len(feats)} image features but {len(topic_ids)} topic ids")
    out = np.full(len(topic_ids), -1, dtype=np.int64)
    small: list[tuple[int, int, int]] = []
    for t in np.unique(topic_ids):
        if t < 0:
            continue
        idx = np.flatnonzero(topic_ids == t)
        u = domains_for_size(len(idx), cfg)
        if u < cfg.n_domains:
            small.append((int(t), len(idx), u))
        if u == 1:
            out[idx] = 0
            continue
        km = KMeans(n_clusters=u, n_init=cfg.n_init, random_state=cfg.seed + int(t))
        labels = km.fit_predict(feats[idx])
        order = np.argsort(-np.bincount(labels, minlength=u), kind="stable")
        remap = np.empty(u, dtype=np.int64)
        remap[order] = np.arange(u)
        out[idx] = remap[labels]
    if small:
        log.warning(
            "%d topic(s) smaller than U=%d got fewer domains (rule %s): %s",
            len(small), cfg.n_domains, cfg.small_topic,
            ", ".join(f"topic {t}: n={n} -> U'={u}" for t, n, u in small),
        )
    return out
