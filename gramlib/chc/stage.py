"""The CHC stage of a profile: shards -> frozen-backbone features -> :func:`run_chc` -> artifacts + metrics.

Why a separate module: :mod:`gramlib.chc.pipeline` is data-agnostic (arrays in, tables out); this
module knows where a profile keeps its shards, backbone, caches and ground truth, reads the
``chc:`` block of ``params.yaml`` (base settings + per-profile overrides) and writes
``artifacts/<profile>/chc/``::

    pairs.parquet      one row per readable pair: key, caption, score, kept, drop_reason,
                       topic_id, topic_word, domain_id, x, y
    topic_words.csv    one row per topic: eq.-3 word and score, BERTopic's words, size, domains
    config.json        the resolved CHCConfig (+ stage settings)
    metrics.json       counts, timings, and -- where the profile has ground truth -- the metrics
    read_stats.json    what the shard reader skipped (empty shards, corrupt samples), with counts

Bad input never gives a silent wrong result: empty shards and corrupt samples are skipped with a
logged warning *and* counted in ``read_stats.json``; a corpus with no pairs, or fewer than the
clusterer needs, raises a ValueError saying how many pairs were left and how many are needed.

Run: ``gramlib chc --profile mini``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gramlib.config import (REPO, Profile, drop_keys, get_profile, load_params, merge_layers, section_layers,
                            sub_layers, typed)
from gramlib.data.corpus import Corpus, corpus_identity, load_corpus
from gramlib.io import atomic_path, read_json, write_json

from .captions import TextConfig, clean_captions, learn_stop_phrases
from .evaluation import REPORT_KEYS, chc_metrics, load_truth
from .pipeline import CHCConfig, CHCResult, run_chc
from .topics import min_pairs_needed

__all__ = ["ExtractionConfig", "StageResult", "backbone_features", "chc_config", "chc_dir", "chc_params",
           "extraction_config", "load_stage", "run_stage", "text_config"]

log = logging.getLogger(__name__)

def chc_dir(profile: Profile) -> Path:
    """Where the stage writes its artifacts: ``artifacts/<profile>/chc``."""
    return profile.artifacts / "chc"


def chc_params(profile_name: str, params: dict | None = None) -> dict:
    """The ``chc:`` section of params.yaml with the profile's overlay ``profiles.<name>.chc`` deep-merged over it."""
    return merge_layers(section_layers("chc", profile_name, load_params() if params is None else params))


def chc_config(profile_name: str, params: dict | None = None) -> CHCConfig:
    """The resolved :class:`CHCConfig` for a profile (``chc`` + ``profiles.<name>.chc``, less ``text``; strict)."""
    layers = section_layers("chc", profile_name, load_params() if params is None else params)
    (where, block), *over = drop_keys(layers, "text", "extraction")
    return typed(CHCConfig, block, where, over=over)


def text_config(profile_name: str, params: dict | None = None) -> TextConfig:
    """The ``chc.text`` settings of a profile (with ``profiles.<name>.chc.text`` over them; strict)."""
    layers = sub_layers(section_layers("chc", profile_name, load_params() if params is None else params), "text")
    (where, block), *over = layers or [("chc.text", {})]
    return typed(TextConfig, block, where, over=over)


@dataclass(frozen=True)
class ExtractionConfig:
    """How the corpus's frozen features are computed (``chc.extraction``); results agree to ~1e-6.

    ``backend: local`` with ``per_shard: false`` (mini): one pass over the corpus in this process, one
    cache file. ``per_shard: true``: one feature file per shard (:mod:`gramlib.data.shard_features`),
    resumed shard by shard, memory-mapped. ``backend: ray`` (paper): per-shard image features and the
    Sentence-BERT caption embeddings as Ray Data pipelines on the ``compute:`` block's cluster
    (``compute.address``, ``compute.unit`` per actor). ``batch_size``: images per forward pass.
    """

    backend: str = "local"
    per_shard: bool = False
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.backend not in ("local", "ray"):
            raise ValueError(f"chc.extraction.backend: {self.backend!r} is not 'local' or 'ray'")
        if self.batch_size < 1:
            raise ValueError(f"chc.extraction.batch_size: {self.batch_size} < 1")


def extraction_config(profile_name: str, params: dict | None = None) -> ExtractionConfig:
    """The ``chc.extraction`` settings of a profile (with ``profiles.<name>.chc.extraction`` over them; strict)."""
    layers = sub_layers(section_layers("chc", profile_name, load_params() if params is None else params), "extraction")
    (where, block), *over = layers or [("chc.extraction", {})]
    return typed(ExtractionConfig, block, where, over=over)


def backbone_features(profile: Profile, corpus: Corpus, cache_dir: str | os.PathLike | None,
                      extraction: ExtractionConfig | None = None, compute: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's L2-normalised image and caption features of the corpus (cached).

    Image features per ``extraction`` (see :class:`ExtractionConfig`; per-shard files live under
    ``<cache_dir>/shards-<backbone and transform>/``); caption features in this process.
    """
    from gramlib.clip.features import encode_images, encode_texts, eval_transform
    from gramlib.clip.pretrain import load_profile_backbone
    from gramlib.io import stable_hash

    ex = extraction or ExtractionConfig()
    bb = load_profile_backbone(profile)
    if ex.backend == "local" and not ex.per_shard:
        img = encode_images(bb, corpus.images, eval_transform(bb), cache_dir, batch_size=ex.batch_size,
                            identity=corpus_identity(corpus), desc="CHC image features")
        img = img.numpy()
    else:
        from gramlib.compute import LOCAL
        from gramlib.data.shard_features import extract_shard_features, load_shard_features

        if cache_dir is None:
            raise ValueError("chc.extraction.per_shard / backend ray: the per-shard feature files need a cache folder")
        tag = stable_hash({"model": bb.identity, "transform": repr(eval_transform(bb)), "precision": bb.precision})
        out = Path(cache_dir) / f"shards-{tag}"
        done = extract_shard_features(profile, corpus.shards, out, compute=compute if ex.backend == "ray" else LOCAL,
                                      batch_size=ex.batch_size)
        log.info("CHC image features: %d shard(s) computed, %d reused, in %s", len(done.computed), len(done.reused), out)
        feats, keys = load_shard_features(out, corpus.shards)
        if keys != corpus.keys:  # the reader skips the same samples; reorder only if a shard's file disagrees
            pos = {k: i for i, k in enumerate(keys)}
            missing = [k for k in corpus.keys if k not in pos]
            if missing:
                raise ValueError(f"{out}: no feature for key(s) {missing[:5]} of the corpus: delete the folder to recompute")
            feats = feats[[pos[k] for k in corpus.keys]]
        img = feats
    txt = encode_texts(bb, corpus.captions, cache_dir, desc="CHC caption features")
    return img, txt.numpy()


@dataclass
class StageResult:
    """What :func:`run_stage` produced (``result`` is None when loaded back from disk)."""

    profile: Profile
    pairs: pd.DataFrame
    topic_words: pd.DataFrame
    metrics: dict[str, Any]
    read_stats: dict[str, Any]
    config: CHCConfig
    out_dir: Path
    corpus: Corpus | None = None
    result: CHCResult | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _write_parquet(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def run_stage(profile: Profile | str, params: dict | None = None, out_dir: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None, cfg: CHCConfig | None = None,
              encoder: Any = None, text: TextConfig | None = None) -> StageResult:
    """Run CHC for a profile and write its artifacts; metrics vs ground truth where it exists.

    ``cfg``/``text`` override the params.yaml block (tests); the backbone (noise filter) always sees
    the raw captions, Sentence-BERT and eq. 3 the cleaned ones; ``cache_dir`` (default ``cache/``) holds the
    backbone features (``features/``) and sentence embeddings (``chc/<profile>/``).
    """
    prof = get_profile(profile, params) if isinstance(profile, str) else profile
    cfg = cfg or chc_config(prof.name, params)
    text = text if text is not None else text_config(prof.name, params)
    cache = Path(cache_dir) if cache_dir is not None else REPO / "cache"
    out = Path(out_dir) if out_dir is not None else chc_dir(prof)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    corpus = load_corpus(prof.root / prof.cc3m_dir)
    timings["read_shards"] = time.perf_counter() - t0
    need = min_pairs_needed(cfg.topics)
    if len(corpus) < need:
        raise ValueError(f"{prof.name}: {len(corpus)} readable pair(s) (of {corpus.read_stats['shards']} shard(s), "
                         f"{len(corpus.read_stats['empty_shards'])} empty, "
                         f"{len(corpus.read_stats['skipped'])} sample(s) skipped) but topic clustering "
                         f"needs at least {need}")
    t = time.perf_counter()
    extraction = extraction_config(prof.name, params)
    compute = None
    if extraction.backend == "ray":
        from gramlib.compute import compute_config

        compute = compute_config(prof.name, params)
    img, txt = backbone_features(prof, corpus, cache / "features", extraction, compute)
    timings["backbone_features"] = time.perf_counter() - t

    chunks = None  # Sentence-BERT in this process, unless the extraction runs on Ray
    if extraction.backend == "ray":
        from .ray_embed import ray_chunk_encoder

        chunks = ray_chunk_encoder(cfg.encoder, compute, batch_size=cfg.batch_size)
    t, c = time.perf_counter(), time.process_time()
    captions = clean_captions(corpus.captions, text)
    learned: list[str] = []
    base = captions
    for _ in range(text.learn_rounds if text.learns else 0):
        # a clustering tells boilerplate (in most topics) from topic words (in few)
        first = run_chc(captions, img, txt, dataclasses.replace(cfg, plot_coords="none"), cache / "chc" / prof.name,
                        keys=corpus.keys, encoder=encoder, encode_chunks=chunks)
        topic_of = first.pairs.topic_id.where(first.pairs.kept, -1).to_numpy()
        new = [p for p in learn_stop_phrases(captions, topic_of, text) if p not in learned]
        learned = sorted([*learned, *new], key=lambda p: (-len(p.split()), p))
        captions = clean_captions(base, TextConfig(strip_phrases=learned))
        timings["chc_learn_passes"] = time.perf_counter() - t
    res = run_chc(captions, img, txt, cfg, cache / "chc" / prof.name, keys=corpus.keys, encoder=encoder,
                  encode_chunks=chunks)
    res.pairs.insert(2, "raw_caption", corpus.captions)
    timings["chc"] = time.perf_counter() - t
    timings["cpu_chc"] = time.process_time() - c  # CPU time of all threads: robust to a shared machine
    timings.update({f"chc_{k}": v for k, v in res.timings.items()})

    truth, synonyms = load_truth(prof)
    metrics: dict[str, Any] = {"n_pairs": len(res.pairs), "n_pairs_kept": int(res.pairs.kept.sum()),
                               "n_topics": int(len(res.topic_words))}
    if truth is not None:
        metrics = chc_metrics(res.pairs, res.topic_words, truth, synonyms)
    metrics["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    metrics["n_learned_stop_phrases"] = len(learned)

    tw = res.topic_words.assign(bertopic_words=res.topic_words.bertopic_words.map(" ".join))
    _write_parquet(res.pairs, out / "pairs.parquet")
    with atomic_path(out / "topic_words.csv") as tmp:
        tw.to_csv(tmp, index=False)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    write_json(out / "text_config.json", {**dataclasses.asdict(text), "learned_stop_phrases": learned})
    write_json(out / "extraction.json", dataclasses.asdict(extraction))
    write_json(out / "metrics.json", metrics)
    write_json(out / "read_stats.json", corpus.read_stats)
    log.info("CHC stage %s: %s", prof.name, {k: v for k, v in metrics.items() if k in REPORT_KEYS})
    return StageResult(profile=prof, pairs=res.pairs, topic_words=tw, metrics=metrics, read_stats=corpus.read_stats,
                       config=cfg, out_dir=out, corpus=corpus, result=res, timings=timings)


def load_stage(profile: Profile | str, params: dict | None = None, out_dir: str | os.PathLike | None = None,
               with_corpus: bool = False) -> StageResult:
    """Read a finished stage back from ``artifacts/<profile>/chc`` (no clustering rerun; the
    notebook's ``rerun=False`` re-plots from it).  ``with_corpus`` re-reads the shards (images)."""
    prof = get_profile(profile, params) if isinstance(profile, str) else profile
    out = Path(out_dir) if out_dir is not None else chc_dir(prof)
    if not (out / "pairs.parquet").exists():
        raise FileNotFoundError(f"{out}/pairs.parquet missing: run the CHC stage for {prof.name!r} first")
    metrics = read_json(out / "metrics.json")
    return StageResult(profile=prof, pairs=pd.read_parquet(out / "pairs.parquet"),
                       topic_words=pd.read_csv(out / "topic_words.csv", keep_default_na=False),
                       metrics=metrics, read_stats=read_json(out / "read_stats.json"),
                       config=typed(CHCConfig, read_json(out / "config.json"), source=str(out / "config.json")), out_dir=out,
                       corpus=load_corpus(prof.root / prof.cc3m_dir) if with_corpus else None,
                       timings=dict(metrics.get("timings_s", {})))
