"""Semantic topic clustering (§3.2): Sentence-BERT embeddings -> UMAP -> HDBSCAN, through BERTopic.

Each step is a pluggable sub-model chosen by :class:`TopicConfig`, BERTopic-style: ``reducer``
("umap" | "pca"), ``clusterer`` ("hdbscan" | "kmeans"), ``backend`` ("cpu" | "cuml").  The paper
reduces with UMAP to avoid the "semantic space collapse" of distances in high dimension, then clusters
with HDBSCAN; PCA / k-means exist for fast tests and ablations.

Scale path (CC3M has 3 M captions): ``fit_sample`` fits the reducer on a random sample of at most N
embeddings and then ``transform``s everything in chunks (works on a memory-mapped array),
``low_memory=True`` for UMAP's nearest-neighbour descent, HDBSCAN on the low-dimensional vectors
only, and ``backend="cuml"`` for GPU UMAP/HDBSCAN (RAPIDS).

Outliers (HDBSCAN's -1): ``"drop"`` keeps them out of every topic; ``"reassign"`` moves each to the
topic with the nearest centroid in the reduced space (cheap, deterministic, uses exactly the space
HDBSCAN clustered in); ``"reassign_bertopic"`` uses BERTopic's ``reduce_outliers(strategy=
"embeddings")`` (cosine to topic embeddings in the sentence-embedding space).  After a reassignment
BERTopic's topic representations are recomputed with ``update_topics``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .ctfidf import VocabRule, make_vectorizer

__all__ = ["TopicConfig", "SampledReducer", "TopicFit", "build_reducer", "build_clusterer", "fit_topics", "reduce_2d", "min_pairs_needed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicConfig:
    """Every knob of the semantic topic step (defaults: BERTopic's, except the seeds)."""

    reducer: str = "umap"  # "umap" | "pca"
    n_neighbors: int = 15
    n_components: int = 5
    min_dist: float = 0.0
    metric: str = "cosine"
    random_state: int | None = 42  # fixed seed => reproducible (and single-threaded) UMAP
    low_memory: bool = False
    n_epochs: int | None = None  # None = UMAP's default (200 for large data, 500 for small)
    fit_sample: int | None = None  # fit the reducer on at most this many embeddings
    transform_chunk: int = 50_000
    clusterer: str = "hdbscan"  # "hdbscan" | "kmeans"
    min_cluster_size: int = 10
    min_samples: int | None = None
    k: int | None = None  # number of clusters for kmeans
    outliers: str = "drop"  # "drop" | "reassign" | "reassign_bertopic"
    backend: str = "cpu"  # "cpu" | "cuml"
    vocab: VocabRule = field(default_factory=VocabRule)
    top_n_words: int = 10


def _cuml() -> Any:
    try:
        import cuml  # noqa: F401
        from cuml.cluster import HDBSCAN, KMeans
        from cuml.decomposition import PCA
        from cuml.manifold import UMAP
    except ImportError as exc:
        raise ImportError(
            "TopicConfig.backend='cuml' needs RAPIDS cuML (cuml.manifold.UMAP, cuml.cluster.HDBSCAN) "
            "on a CUDA machine; it is not installed here. Install the paper profile's GPU extras "
            "(pip install -e \".[paper-gpu]\" --extra-index-url=https://pypi.nvidia.com, CUDA 12; other CUDA "
            "versions: docs.rapids.ai) or set chc.topics.backend: cpu for the profile."
        ) from exc
    return {"UMAP": UMAP, "HDBSCAN": HDBSCAN, "PCA": PCA, "KMeans": KMeans}


def build_reducer(cfg: TopicConfig, n_components: int | None = None) -> Any:
    """The raw dimensionality-reduction model named by ``cfg`` (not yet wrapped for sampling)."""
    nc = cfg.n_components if n_components is None else n_components
    if cfg.backend not in ("cpu", "cuml"):
        raise ValueError(f"unknown backend {cfg.backend!r} (cpu | cuml)")
    if cfg.reducer == "umap":
        kw: dict[str, Any] = dict(n_neighbors=cfg.n_neighbors, n_components=nc, min_dist=cfg.min_dist,
                                  metric=cfg.metric, random_state=cfg.random_state)
        if cfg.n_epochs is not None:
            kw["n_epochs"] = cfg.n_epochs
        if cfg.backend == "cuml":
            return _cuml()["UMAP"](**kw)
        from umap import UMAP

        return UMAP(low_memory=cfg.low_memory, **kw)
    if cfg.reducer == "pca":
        if cfg.backend == "cuml":
            return _cuml()["PCA"](n_components=nc)
        from sklearn.decomposition import PCA

        return PCA(n_components=nc, random_state=cfg.random_state)
    raise ValueError(f"unknown reducer {cfg.reducer!r} (umap | pca)")


def build_clusterer(cfg: TopicConfig) -> Any:
    """The clustering model named by ``cfg``."""
    if cfg.clusterer == "hdbscan":
        kw = dict(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples)
        if cfg.backend == "cuml":
            return _cuml()["HDBSCAN"](**kw)
        from hdbscan import HDBSCAN

        return HDBSCAN(metric="euclidean", cluster_selection_method="eom", prediction_data=False, **kw)
    if cfg.clusterer == "kmeans":
        if not cfg.k or cfg.k < 1:
            raise ValueError("clusterer='kmeans' needs TopicConfig.k >= 1")
        if cfg.backend == "cuml":
            return _cuml()["KMeans"](n_clusters=cfg.k, random_state=cfg.random_state or 0)
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=cfg.k, n_init=10, random_state=cfg.random_state)
    raise ValueError(f"unknown clusterer {cfg.clusterer!r} (hdbscan | kmeans)")


class SampledReducer:
    """Wraps a reducer: fit on a random sample of at most ``fit_sample`` rows, transform in chunks.

    With ``fit_sample=None`` (or N <= fit_sample) it is a plain ``fit_transform``.  The reduced
    vectors of the last ``fit_transform`` are kept in ``embedding_`` (BERTopic does not keep them).
    """

    def __init__(self, base: Any, fit_sample: int | None = None, chunk: int = 50_000, seed: int | None = 0):
        self.base, self.fit_sample, self.chunk, self.seed = base, fit_sample, chunk, seed
        self.embedding_: np.ndarray | None = None

    def fit(self, X: np.ndarray, y: Any = None) -> "SampledReducer":
        n = len(X)
        if self.fit_sample is not None and n > self.fit_sample:
            idx = np.sort(np.random.default_rng(self.seed).choice(n, self.fit_sample, replace=False))
            log.info("reducer: fitting on a sample of %d of %d embeddings", len(idx), n)
            self.base.fit(np.asarray(X[idx], dtype=np.float32))
        else:
            self.base.fit(np.asarray(X, dtype=np.float32))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        parts = [np.asarray(self.base.transform(np.asarray(X[s : s + self.chunk], dtype=np.float32)))
                 for s in range(0, len(X), self.chunk)]
        return np.concatenate(parts, axis=0).astype(np.float32)

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        """Reduce the *distinct* rows only and broadcast back.

        Web captions repeat (the same alt-text on many images; after boilerplate removal the mini
        corpus has ~1 k distinct captions in 15 k). Hundreds of copies of one point give UMAP
        disconnected kNN components whose spectral initialisation dominates the run time and
        distorts the layout; identical inputs get identical coordinates either way.
        """
        unique, inverse = _distinct_rows(X)
        if len(unique) < len(X):
            log.info("reducer: %d distinct of %d embeddings", len(unique), len(X))
        if self.fit_sample is not None and len(unique) > self.fit_sample:
            out = self.fit(unique).transform(unique)
        else:
            out = np.asarray(self.base.fit_transform(np.asarray(unique, dtype=np.float32)), dtype=np.float32)
        out = out[inverse]
        self.embedding_ = out
        return out


def _distinct_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in first-seen order, index of each row's distinct row)."""
    A = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    keys = A.view(np.dtype((np.void, A.dtype.itemsize * A.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)  # keep first-seen order (deterministic, independent of byte sorting)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return A[first[order]], rank[inverse.ravel()]


def min_pairs_needed(cfg: TopicConfig) -> int:
    """Fewest pairs the clusterer can work with: 2 * min_cluster_size (HDBSCAN) or 2 * k (k-means)."""
    return 2 * (cfg.min_cluster_size if cfg.clusterer == "hdbscan" else (cfg.k or 1))


@dataclass
class TopicFit:
    """Result of :func:`fit_topics`: final topic per caption (-1 = outlier), the fitted BERTopic
    model, the reduced vectors the clusterer saw, and how many outliers HDBSCAN produced."""

    topics: np.ndarray
    model: Any
    reduced: np.ndarray
    n_outliers: int
    outliers_reassigned: int


def _nearest_centroid(reduced: np.ndarray, topics: np.ndarray) -> np.ndarray:
    ids = np.unique(topics[topics >= 0])
    cents = np.stack([reduced[topics == t].mean(axis=0) for t in ids])
    out = topics.copy()
    o = np.flatnonzero(topics < 0)
    if len(o):
        d = ((reduced[o, None, :] - cents[None, :, :]) ** 2).sum(-1)
        out[o] = ids[d.argmin(axis=1)]
    return out


def fit_topics(captions: Sequence[str], embeddings: np.ndarray, cfg: TopicConfig, embedding_model: Any = None) -> TopicFit:
    """Cluster captions into topics with BERTopic, using precomputed sentence embeddings."""
    from bertopic import BERTopic

    captions = list(captions)
    n = len(captions)
    if len(embeddings) != n:
        raise ValueError(f"{n} captions but {len(embeddings)} embeddings")
    need = min_pairs_needed(cfg)
    if n < need:
        raise ValueError(f"topic clustering needs at least {need} pairs for {cfg.clusterer} with this config, got {n}")
    if cfg.outliers not in ("drop", "reassign", "reassign_bertopic"):
        raise ValueError(f"unknown outliers rule {cfg.outliers!r} (drop | reassign | reassign_bertopic)")
    reducer = SampledReducer(build_reducer(cfg), cfg.fit_sample, cfg.transform_chunk, cfg.random_state)
    model = BERTopic(
        embedding_model=embedding_model,
        umap_model=reducer,
        hdbscan_model=build_clusterer(cfg),
        vectorizer_model=make_vectorizer(cfg.vocab),
        top_n_words=cfg.top_n_words,
        calculate_probabilities=False,
        verbose=False,
    )
    topics = np.asarray(model.fit_transform(captions, embeddings=embeddings)[0], dtype=np.int64)
    reduced = reducer.embedding_
    n_out = int((topics < 0).sum())
    if (topics >= 0).sum() == 0:
        raise ValueError(
            f"{cfg.clusterer} put all {n} captions in the outlier topic; lower min_cluster_size "
            f"(now {cfg.min_cluster_size}) or use clusterer='kmeans'"
        )
    moved = 0
    if n_out and cfg.outliers != "drop":
        if cfg.outliers == "reassign":
            new = _nearest_centroid(reduced, topics)
        else:
            new = np.asarray(model.reduce_outliers(captions, topics.tolist(), strategy="embeddings",
                                                   embeddings=np.asarray(embeddings)), dtype=np.int64)
        moved = int((new != topics).sum())
        topics = new
        model.update_topics(captions, topics=topics.tolist(), top_n_words=cfg.top_n_words,
                            vectorizer_model=make_vectorizer(cfg.vocab))
    log.info("topics: %d topics, %d outliers (%s, %d reassigned)", len(np.unique(topics[topics >= 0])), n_out, cfg.outliers, moved)
    return TopicFit(topics=topics, model=model, reduced=reduced, n_outliers=n_out, outliers_reassigned=moved)


def reduce_2d(embeddings: np.ndarray, cfg: TopicConfig, method: str = "umap") -> np.ndarray | None:
    """2-D coordinates for plotting (same reducer settings, 2 components); ``method="none"`` skips."""
    if method == "none":
        return None
    if method not in ("umap", "pca"):
        raise ValueError(f"unknown plot reducer {method!r} (umap | pca | none)")
    from dataclasses import replace

    sub = replace(cfg, reducer=method)
    return SampledReducer(build_reducer(sub, n_components=2), cfg.fit_sample, cfg.transform_chunk, cfg.random_state).fit_transform(embeddings)
