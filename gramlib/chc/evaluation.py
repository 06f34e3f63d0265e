"""CHC scored against a generated world's ground truth (mini and smoke profiles): topic NMI, topic-word
accuracy, filter precision/recall, domain-style purity, and the per-topic table behind the failures.

Real corpora (the paper profile) have no ground truth: :func:`load_truth` returns None and the stage
reports counts only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gramlib.config import Profile
from gramlib.io import read_json, write_json

from .metrics import (
    concept_coverage,
    domain_purity_chance,
    domain_style_purity,
    majority_concepts,
    topic_nmi,
    topic_word_accuracy,
)
from .noise_filter import filter_report

#: The keys of reports/chc/metrics.json (issue 3), in this order.
REPORT_KEYS = ("nmi_topic_concept", "topic_word_accuracy", "filter_precision", "filter_recall",
               "domain_style_purity", "domain_style_purity_chance", "n_topics", "n_pairs_kept",
               "concept_coverage")


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
    """Exactly the issue's key set, in order (the rest stays in the artifact's metrics.json); a metric
    that needs ground truth is None on a profile without it (real CC3M)."""
    return {k: metrics.get(k) for k in REPORT_KEYS}


def topic_table(pairs: pd.DataFrame, topic_words: pd.DataFrame, truth: pd.DataFrame | None,
                synonyms: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """One row per topic: size, eq.-3 and BERTopic words, majority concept and its share, whether
    the word names it (the rule of :func:`accepted_topic_words`), and the dominant style share.
    Without ground truth (real CC3M) the columns that need it are left empty."""
    kept = pairs[pairs.kept & (pairs.topic_id >= 0)]
    if truth is None:
        tw = topic_words.set_index("topic_id")
        sizes = kept.groupby("topic_id").size()
        return pd.DataFrame([{"topic_id": int(tid), "size": int(n), "eq3_word": tw.loc[tid, "eq3_word"],
                              "bertopic_words": tw.loc[tid, "bertopic_words"], "majority_concept": None,
                              "majority_share": float("nan"), "n_concepts": None, "word_ok": None,
                              "top_style_share": float("nan")} for tid, n in sizes.items()],
                            columns=["topic_id", "size", "eq3_word", "bertopic_words", "majority_concept",
                                     "majority_share", "n_concepts", "word_ok", "top_style_share"]
                            ).sort_values("size", ascending=False, kind="stable").reset_index(drop=True)
    t = truth.set_index("key")
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


def load_truth(profile: Profile) -> tuple[pd.DataFrame | None, dict | None]:
    truth_path = profile.root / "cc3m_truth.parquet"
    world_path = profile.root / "world.json"
    if not truth_path.exists() or not world_path.exists():
        return None, None
    return pd.read_parquet(truth_path), read_json(world_path)["synonyms"]
