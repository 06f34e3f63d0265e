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

Run: ``python -m gramlib.chc.stage --profile mini``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from gramlib.config import REPO, Profile, deep_merge, get_profile, load_params
from gramlib.data.corpus import Corpus, corpus_identity, load_corpus, load_corpus_shared
from gramlib.io import atomic_path, read_json, write_json

from .metrics import (
    concept_coverage,
    domain_purity_chance,
    domain_style_purity,
    majority_concepts,
    topic_nmi,
    topic_word_accuracy,
)
from .noise_filter import filter_report
from .pipeline import CHCConfig, CHCResult, run_chc
from .topics import min_pairs_needed

__all__ = [
    "Corpus", "StageResult", "TextConfig", "text_config", "clean_captions", "chc_params", "chc_config", "load_corpus", "load_corpus_shared", "backbone_features",
    "accepted_topic_words", "chc_metrics", "REPORT_KEYS", "report_metrics", "run_stage", "topic_table",
    "failure_kinds", "write_report", "load_truth", "clean_captions",
    "load_stage", "chc_dir",
]

log = logging.getLogger(__name__)

#: The keys of reports/chc/metrics.json (issue 3), in this order.
REPORT_KEYS = ("nmi_topic_concept", "topic_word_accuracy", "filter_precision", "filter_recall",
               "domain_style_purity", "domain_style_purity_chance", "n_topics", "n_pairs_kept",
               "concept_coverage")


def chc_dir(profile: Profile) -> Path:
    """Where the stage writes its artifacts: ``artifacts/<profile>/chc``."""
    return profile.artifacts / "chc"


def chc_params(profile_name: str, params: dict | None = None) -> dict:
    """The ``chc:`` block of params.yaml with ``chc.profiles.<name>`` merged over its base settings."""
    params = load_params() if params is None else params
    block = dict(params.get("chc") or {})
    overrides = block.pop("profiles", None) or {}
    return deep_merge(block, overrides.get(profile_name) or {})


def chc_config(profile_name: str, params: dict | None = None) -> CHCConfig:
    """The resolved :class:`CHCConfig` for a profile (unknown keys raise in ``from_dict``)."""
    return CHCConfig.from_dict({k: v for k, v in chc_params(profile_name, params).items() if k != "text"})


@dataclass
class TextConfig:
    """Caption clean-up before Sentence-BERT and eq. 3 (never before the backbone's noise filter).

    Web captions carry boilerplate that says how a picture looks ("a pencil drawing of"), where it
    is ("for sale", "hd wallpaper") or nothing ("look at this").  Left in, Sentence-BERT clusters by
    that boilerplate -- style belongs to the *visual domain* level of CHC, not to the semantic
    topic.  ``strip_phrases`` are removed case-insensitively as whole words/phrases, longest first;
    a caption that would become empty keeps its original text.  Empty list = the paper's raw text.
    """

    strip_phrases: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "TextConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown chc.text key(s) {sorted(unknown)}")
        return cls(**d)


def text_config(profile_name: str, params: dict | None = None) -> TextConfig:
    """The ``chc.text`` settings of a profile."""
    return TextConfig.from_dict(chc_params(profile_name, params).get("text"))


def clean_captions(captions: Sequence[str], cfg: TextConfig) -> list[str]:
    """Captions with ``cfg.strip_phrases`` removed (see :class:`TextConfig`); order preserved."""
    import re

    if not cfg.strip_phrases:
        return list(captions)
    phrases = sorted({p.strip().lower() for p in cfg.strip_phrases if p.strip()}, key=len, reverse=True)
    pat = re.compile(r"(?<![\w#-])(?:" + "|".join(re.escape(p) for p in phrases) + r")(?![\w-])", re.IGNORECASE)
    out = []
    for c in captions:
        t = re.sub(r"\s+", " ", re.sub(r"\s*,\s*", " ", pat.sub(" ", c))).strip(" ,")
        out.append(t if t else c)
    return out


def backbone_features(profile: Profile, corpus: Corpus, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's L2-normalised image and caption features of the corpus (cached)."""
    from gramlib.clip.features import encode_images, encode_texts, eval_transform
    from gramlib.clip.pretrain import load_profile_backbone

    bb = load_profile_backbone(profile)
    img = encode_images(bb, corpus.images, eval_transform(bb), cache_dir, identity=corpus_identity(corpus),
                        desc="CHC image features")
    txt = encode_texts(bb, corpus.captions, cache_dir, desc="CHC caption features")
    return img.numpy(), txt.numpy()


def accepted_topic_words(synonyms: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """Words that name a concept, for topic-word accuracy.

    A topic word is one token of the vocabulary, while many names are phrases ("letter a",
    "polka dots"), so besides the concept name (``_`` -> space) and its synonyms we accept a single
    (whitespace-separated) token of a synonym *if that token names no other concept* in the world's
    vocabulary ("polka", "dollar", "b", "three-sided"); tokens shared across concepts ("letter",
    "sign", "pattern") stay wrong.
    """
    def tokens(s: str) -> list[str]:
        return [t for t in s.lower().replace("_", " ").split() if t]

    owners: dict[str, set[str]] = {}
    for c, syn in synonyms.items():
        for s in [c, *syn]:
            for t in tokens(s):
                owners.setdefault(t, set()).add(c)
    out: dict[str, set[str]] = {}
    for c, syn in synonyms.items():
        names = {c.lower(), c.lower().replace("_", " "), *(s.lower() for s in syn)}
        toks = {t for s in [c, *syn] for t in tokens(s) if owners[t] == {c}}
        out[c] = names | toks
    return out


def chc_metrics(pairs: pd.DataFrame, topic_words: pd.DataFrame, truth: pd.DataFrame,
                synonyms: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """CHC vs the mini world's ground truth (``truth``: key, concept, style, mismatched).

    Topic metrics use every kept pair with a topic (outliers count as a topic of their own when
    they were dropped, so dropping cannot inflate NMI); the concept of a pair is its *image's*
    concept (what a meta-training task built from the pair would be labelled with).
    """
    t = truth.set_index("key").reindex(pairs["key"])
    if t["concept"].isna().any():
        raise ValueError(f"{int(t['concept'].isna().sum())} pair key(s) have no ground truth")
    valid = (pairs["drop_reason"] != "bad_caption").to_numpy()
    filt_keep = (pairs["drop_reason"] != "noise").to_numpy()[valid]
    fr = filter_report(filt_keep, t["mismatched"].to_numpy(bool)[valid])

    kept = pairs["kept"].to_numpy(bool)
    topics = pairs["topic_id"].to_numpy()[kept]
    concept = t["concept"].to_numpy()[kept]
    caption_concept = t["caption_concept"].to_numpy()[kept] if "caption_concept" in t else concept
    style = t["style"].to_numpy()[kept]
    domain = pairs["domain_id"].to_numpy()[kept]
    word_of = dict(zip(topic_words["topic_id"].astype(int), topic_words["eq3_word"]))
    strict = {c: {c.lower(), c.lower().replace("_", " "), *(s.lower() for s in syn)} for c, syn in synonyms.items()}
    maj = majority_concepts(topics, concept)
    has_topic = topics >= 0
    m = {
        "nmi_topic_concept": topic_nmi(topics, concept, include_outliers=True),
        "topic_word_accuracy": topic_word_accuracy(topics, concept, word_of, accepted_topic_words(synonyms)),
        "filter_precision": fr["precision"],
        "filter_recall": fr["recall"],
        "domain_style_purity": domain_style_purity(topics, domain, style),
        "domain_style_purity_chance": domain_purity_chance(topics, domain, style),
        "n_topics": int(len(topic_words)),
        "n_pairs_kept": int(kept.sum()),
        "concept_coverage": concept_coverage(topics, concept, all_concepts=list(synonyms)),
        # details (not in the report's key set)
        "nmi_topic_concept_excl_outliers": topic_nmi(topics, concept),
        "nmi_topic_caption_concept": topic_nmi(topics, caption_concept, include_outliers=True),
        "topic_word_accuracy_strict": topic_word_accuracy(topics, concept, word_of, strict),
        "filter_good_kept": fr["good_kept"],
        "filter_n_removed": fr["n_removed"],
        "filter_n_mismatched": fr["n_mismatched"],
        "n_pairs": int(len(pairs)),
        "n_outliers_kept": int((~has_topic).sum()),
        "n_concepts": int(len(synonyms)),
        "n_concept_majority_topics": int(len(maj)),
        "n_concepts_covered": int(len(set(maj.values()))),
        "mismatched_kept": int(t["mismatched"].to_numpy(bool)[kept].sum()),
    }
    return m


def report_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the issue's key set, in order (the rest stays in the artifact's metrics.json)."""
    return {k: metrics[k] for k in REPORT_KEYS}


def topic_table(pairs: pd.DataFrame, topic_words: pd.DataFrame, truth: pd.DataFrame,
                synonyms: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per topic: size, eq.-3 and BERTopic words, majority concept and its share, whether
    the word names it (the rule of :func:`accepted_topic_words`), and the dominant style share."""
    t = truth.set_index("key")
    kept = pairs[pairs.kept & (pairs.topic_id >= 0)]
    conc = t.loc[kept.key, "concept"].to_numpy()
    sty = t.loc[kept.key, "style"].to_numpy()
    ok = accepted_topic_words(synonyms)
    rows = []
    tw = topic_words.set_index("topic_id")
    for tid, idx in kept.groupby("topic_id").indices.items():
        c = pd.Series(conc[idx]).value_counts()
        s = pd.Series(sty[idx]).value_counts()
        word = tw.loc[tid, "eq3_word"]
        rows.append({"topic_id": int(tid), "size": len(idx), "eq3_word": word,
                     "bertopic_words": tw.loc[tid, "bertopic_words"],
                     "majority_concept": c.index[0], "majority_share": round(float(c.iloc[0] / len(idx)), 3),
                     "n_concepts": int(len(c)), "word_ok": isinstance(word, str) and word.lower() in ok.get(c.index[0], set()),
                     "top_style_share": round(float(s.iloc[0] / len(idx)), 3)})
    return pd.DataFrame(rows).sort_values("size", ascending=False, kind="stable").reset_index(drop=True)


def failure_kinds(table: pd.DataFrame, all_concepts: Sequence[str], mixed_below: float = 0.5) -> dict[str, pd.DataFrame]:
    """The ways the topics still differ from the concepts, each as a table.

    ``mixed``: topics whose majority concept holds < ``mixed_below`` of the pairs (merged concepts,
    e.g. all letters); ``split``: concepts that are the majority of several topics (usually one
    topic per synonym); ``uncovered``: concepts that are no topic's majority; ``wrong_word``: topics
    whose eq.-3 word does not name their majority concept.
    """
    split = table.groupby("majority_concept").agg(n_topics=("topic_id", "size"), words=("eq3_word", lambda w: ", ".join(map(str, w))))
    uncovered = sorted(set(all_concepts) - set(table.majority_concept))
    return {
        "mixed": table[table.majority_share < mixed_below].reset_index(drop=True),
        "split": split[split.n_topics > 1].sort_values("n_topics", ascending=False).reset_index(),
        "uncovered": pd.DataFrame({"concept": uncovered}),
        "wrong_word": table[~table.word_ok].reset_index(drop=True),
    }


def write_report(metrics: Mapping[str, Any], reports_dir: str | os.PathLike, stamp: Mapping[str, Any]) -> Path:
    """``<reports_dir>/chc/metrics.json``: exactly :data:`REPORT_KEYS` plus a ``provenance`` block."""
    return write_json(Path(reports_dir) / "chc" / "metrics.json", {**report_metrics(metrics), "provenance": dict(stamp)})


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


def load_truth(profile: Profile) -> tuple[pd.DataFrame | None, dict | None]:
    truth_path = profile.root / "cc3m_truth.parquet"
    world_path = profile.root / "world.json"
    if not truth_path.exists() or not world_path.exists():
        return None, None
    return pd.read_parquet(truth_path), read_json(world_path)["synonyms"]


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
    img, txt = backbone_features(prof, corpus, cache / "features")
    timings["backbone_features"] = time.perf_counter() - t

    t, c = time.perf_counter(), time.process_time()
    captions = clean_captions(corpus.captions, text)
    res = run_chc(captions, img, txt, cfg, cache / "chc" / prof.name, keys=corpus.keys, encoder=encoder)
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

    tw = res.topic_words.assign(bertopic_words=res.topic_words.bertopic_words.map(" ".join))
    _write_parquet(res.pairs, out / "pairs.parquet")
    with atomic_path(out / "topic_words.csv") as tmp:
        tw.to_csv(tmp, index=False)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    write_json(out / "text_config.json", dataclasses.asdict(text))
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
                       config=CHCConfig.from_dict(read_json(out / "config.json")), out_dir=out,
                       corpus=load_corpus(prof.root / prof.cc3m_dir) if with_corpus else None,
                       timings=dict(metrics.get("timings_s", {})))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = run_stage(a.profile or load_params().get("profile", "mini"))
    print({k: res.metrics.get(k) for k in REPORT_KEYS})


if __name__ == "__main__":
    main()
