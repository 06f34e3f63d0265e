"""Cross-Modal Hierarchical Clustering end to end (§3.2): pairs -> (topic, topic word, domain).

    noise filter -> Sentence-BERT -> reducer (UMAP) -> clusterer (HDBSCAN) [BERTopic]
    -> topic word by eq. 3 -> per-topic k-means domains on image features

Each step's sub-model is chosen by configuration (:class:`CHCConfig`), never by editing code.
Bad input raises (or, for malformed captions, is dropped with a logged count when asked to);
nothing is silently skipped: every input pair appears in ``CHCResult.pairs`` with a drop reason.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gramlib.config import typed
from gramlib.io import write_json, write_npy, write_text

from .ctfidf import bertopic_topic_words, c_tf_idf_with_counts, topic_words
from .domains import DomainConfig, cluster_domains
from .encoders import embed_captions, load_sentence_encoder
from .noise_filter import FilterConfig, filter_pairs, pair_scores
from .topics import TopicConfig, fit_topics, min_pairs_needed, reduce_2d

__all__ = ["CHCConfig", "CHCResult", "run_chc"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CHCConfig:
    """All of CHC's settings, nested per step (a params.yaml block maps onto it via from_dict)."""

    filter: FilterConfig = field(default_factory=FilterConfig)
    encoder: str = "all-MiniLM-L6-v2"
    device: str = "cpu"
    batch_size: int = 128
    topics: TopicConfig = field(default_factory=TopicConfig)
    domains: DomainConfig = field(default_factory=DomainConfig)
    bad_captions: str = "raise"  # "raise" | "drop" (dropped with a logged count)
    plot_coords: str = "umap"  # "umap" | "pca" | "none"
    show_progress_bar: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "chc") -> "CHCConfig":
        """Build from nested plain dicts (e.g. a params.yaml block); strict (:func:`gramlib.config.typed`)."""
        return typed(cls, d, where)


@dataclass
class CHCResult:
    """``pairs``: one row per input pair (key, caption, score, kept, drop_reason, topic_id,
    topic_word, domain_id, x, y); ``topic_words``: one row per topic (topic_id, eq3_word, eq3_score,
    bertopic_words, size, n_domains).  ``embeddings``, ``reduced`` and ``coords_2d`` are aligned with
    ``pairs[pairs.kept]`` (the rows that went into clustering), in order."""

    pairs: pd.DataFrame
    topic_words: pd.DataFrame
    embeddings: np.ndarray
    reduced: np.ndarray
    coords_2d: np.ndarray | None
    eq3_scores: np.ndarray
    vocab: list[str]
    timings: dict[str, float]
    topic_model: Any
    config: CHCConfig

    def save(self, out_dir: str | Path) -> Path:
        """Write tables (CSV), arrays (.npy), timings and config (JSON) atomically under ``out_dir``."""
        out = Path(out_dir)
        write_text(out / "pairs.csv", self.pairs.to_csv(index=False))
        tw = self.topic_words.assign(bertopic_words=self.topic_words.bertopic_words.map(" ".join))
        write_text(out / "topic_words.csv", tw.to_csv(index=False))
        write_npy(out / "reduced.npy", np.asarray(self.reduced))
        if self.coords_2d is not None:
            write_npy(out / "coords_2d.npy", np.asarray(self.coords_2d))
        write_json(out / "timings.json", self.timings)
        write_json(out / "config.json", dataclasses.asdict(self.config))
        return out


def _check_features(name: str, x: Any, n: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"{name} must have shape ({n}, d), got {x.shape}")
    return x


def run_chc(
    captions: Sequence[Any],
    image_features: np.ndarray,
    caption_features: np.ndarray | None,
    cfg: CHCConfig | None = None,
    cache_dir: str | Path | None = None,
    keys: Sequence[Any] | None = None,
    encoder: Any = None,
    encode_chunks: Any = None,
) -> CHCResult:
    """Run CHC on aligned (caption, image feature, caption feature) triples.

    ``image_features``/``caption_features`` are the frozen backbone's features (normalised here
    anyway); ``caption_features`` may be None only with ``filter.rule == "none"``.  ``encoder``
    overrides ``cfg.encoder`` (any object with SentenceTransformer's ``encode``); ``encode_chunks``
    runs the caption chunks elsewhere (:func:`gramlib.chc.ray_embed.ray_chunk_encoder`).
    """
    cfg = cfg or CHCConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    captions = list(captions)
    n = len(captions)
    if n == 0:
        raise ValueError("run_chc: empty caption list")
    keys = list(range(n)) if keys is None else list(keys)
    if len(keys) != n:
        raise ValueError(f"run_chc: {len(keys)} keys for {n} captions")
    if len(set(keys)) != n:
        raise ValueError("run_chc: keys are not unique")
    img = _check_features("image_features", image_features, n)
    if caption_features is None and cfg.filter.rule != "none":
        raise ValueError("run_chc: caption_features are required unless filter.rule == 'none'")

    bad = np.array([not isinstance(c, str) or not c.strip() for c in captions], dtype=bool)
    if bad.any():
        where = ", ".join(f"index {i} (key {keys[i]!r}): {captions[i]!r}" for i in np.flatnonzero(bad)[:5])
        if cfg.bad_captions == "raise":
            raise ValueError(f"run_chc: {int(bad.sum())} caption(s) empty or not a str, e.g. {where}")
        if cfg.bad_captions != "drop":
            raise ValueError(f"unknown bad_captions rule {cfg.bad_captions!r} (raise | drop)")
        log.warning("run_chc: dropping %d caption(s) empty or not a str, e.g. %s", int(bad.sum()), where)
    valid = np.flatnonzero(~bad)

    scores = np.full(n, np.nan, dtype=np.float32)
    if caption_features is not None:
        txt = _check_features("caption_features", caption_features, n)
        scores[valid] = pair_scores(img[valid], txt[valid])
    keep_valid = filter_pairs(scores[valid], cfg.filter)
    kept_idx = valid[keep_valid]
    timings["filter"] = time.perf_counter() - t0
    need = min_pairs_needed(cfg.topics)
    if len(kept_idx) < need:
        raise ValueError(
            f"run_chc: {len(kept_idx)} pairs left after filtering ({int(bad.sum())} bad captions, "
            f"{int((~keep_valid).sum())} filtered) but clustering needs at least {need}"
        )

    t = time.perf_counter()
    enc = encoder if encoder is not None else load_sentence_encoder(cfg.encoder, cfg.device)
    valid_caps = [captions[i] for i in valid]
    emb_all = embed_captions(valid_caps, enc, cache_dir, batch_size=cfg.batch_size,
                             show_progress_bar=cfg.show_progress_bar, encode_chunks=encode_chunks)
    emb = np.asarray(emb_all[np.flatnonzero(keep_valid)])
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    kept_caps = [captions[i] for i in kept_idx]
    fit = fit_topics(kept_caps, emb, cfg.topics, embedding_model=enc)
    topics = fit.topics
    timings["topics"] = time.perf_counter() - t

    t = time.perf_counter()
    ids = np.unique(topics[topics >= 0])
    docs = [[kept_caps[i] for i in np.flatnonzero(topics == tid)] for tid in ids]
    eq3, vocab, counts = c_tf_idf_with_counts(docs, cfg.topics.vocab)
    words = topic_words(eq3, vocab, counts)
    word_of = {int(tid): w for tid, w in zip(ids, words)}
    timings["ctfidf"] = time.perf_counter() - t

    t = time.perf_counter()
    doms = cluster_domains(img[kept_idx], topics, cfg.domains)
    timings["domains"] = time.perf_counter() - t

    t = time.perf_counter()
    coords = reduce_2d(emb, cfg.topics, cfg.plot_coords)
    timings["plot_coords"] = time.perf_counter() - t

    pairs = pd.DataFrame({
        "key": keys,
        "caption": captions,
        "score": scores,
        "kept": np.zeros(n, dtype=bool),
        "drop_reason": np.where(bad, "bad_caption", "noise").astype(object),
        "topic_id": np.full(n, -1, dtype=np.int64),
        "topic_word": pd.Series([None] * n, dtype=object),
        "domain_id": np.full(n, -1, dtype=np.int64),
        "x": np.full(n, np.nan, dtype=np.float32),
        "y": np.full(n, np.nan, dtype=np.float32),
    })
    pairs.loc[kept_idx, "kept"] = True
    pairs.loc[kept_idx, "drop_reason"] = np.where(topics < 0, "outlier", "")
    pairs.loc[kept_idx, "topic_id"] = topics
    pairs.loc[kept_idx, "topic_word"] = [word_of.get(int(tid)) for tid in topics]
    pairs.loc[kept_idx, "domain_id"] = doms
    if coords is not None:
        pairs.loc[kept_idx, "x"] = coords[:, 0]
        pairs.loc[kept_idx, "y"] = coords[:, 1]

    best = {int(tid): (float(eq3[r][vocab.index(w)]) if w is not None else np.nan) for r, (tid, w) in enumerate(zip(ids, words))}
    tw = pd.DataFrame({
        "topic_id": ids.astype(np.int64),
        "eq3_word": words,
        "eq3_score": [best[int(tid)] for tid in ids],
        "bertopic_words": [bertopic_topic_words(fit.model, int(tid), 5) for tid in ids],
        "size": [int((topics == tid).sum()) for tid in ids],
        "n_domains": [int(len(np.unique(doms[topics == tid]))) for tid in ids],
    })
    timings["total"] = time.perf_counter() - t0
    log.info("CHC: %d pairs, %d kept, %d topics, timings %s", n, len(kept_idx), len(ids),
             {k: round(v, 2) for k, v in timings.items()})
    return CHCResult(pairs=pairs, topic_words=tw, embeddings=emb, reduced=fit.reduced, coords_2d=coords,
                     eq3_scores=eq3, vocab=vocab, timings=timings, topic_model=fit.model, config=cfg)
