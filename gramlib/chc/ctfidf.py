"""Cluster-wise TF-IDF exactly as the GRAM paper's eq. 3 (§3.2), plus BERTopic's own words.

GRAM picks each topic's label with

    TF-IDF_{w,l} = (N_{w,l} / N_l) * log(L / (L_w + 1))                       (eq. 3)

where all captions of cluster l are concatenated into one document, N_{w,l} is the count of word
w in that document, N_l the total number of words in it, L the number of clusters and L_w the
number of clusters whose document contains w.  BERTopic's built-in ``ClassTfidfTransformer`` uses
a different weighting (log(1 + A / f_w) with A the average words per cluster), so we implement
eq. 3 ourselves and keep BERTopic's words only for side-by-side comparison.

Note the paper's formula as written: a word present in *every* cluster (L_w = L) gets
idf = log(L / (L + 1)) < 0, and with L = 1 every idf is negative.  We keep that on purpose (it is
the paper's formula) -- such words can never win against a word that is missing from some cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

__all__ = [
    "VocabRule",
    "c_tf_idf",
    "c_tf_idf_with_counts",
    "topic_words",
    "eq3_topic_words",
    "eq3_score",
    "bertopic_topic_words",
    "make_vectorizer",
]


@dataclass(frozen=True)
class VocabRule:
    """Which tokens count as words, for eq. 3 and for BERTopic's vectorizer alike.

    ``min_df`` counts *clusters* (the vectorizer sees one concatenated document per cluster, as in
    BERTopic), so ``min_df=2`` drops words that occur in a single cluster only.
    ``n_l`` chooses N_l in eq. 3: ``"vocab"`` (default) = words that survive the rule (stop words
    removed), ``"all_tokens"`` = every token matched by ``token_pattern`` incl. stop words.  N_l is
    constant within a cluster, so the choice never changes a topic's word, only the score scale.
    """

    stop_words: str | list[str] | None = "english"
    token_pattern: str = r"(?u)\b[a-zA-Z][a-zA-Z]+\b"
    lowercase: bool = True
    min_df: int = 1
    n_l: str = "vocab"  # "vocab" | "all_tokens"
    extra_stop_words: list[str] = field(default_factory=list)

    def stop_word_list(self) -> list[str] | None:
        """Resolve the stop-word setting into one explicit list (None = no stop words)."""
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        if self.stop_words is None:
            base: set[str] = set()
        elif isinstance(self.stop_words, str):
            if self.stop_words != "english":
                raise ValueError(f"stop_words must be 'english', a list or None, got {self.stop_words!r}")
            base = set(ENGLISH_STOP_WORDS)
        else:
            base = set(self.stop_words)
        base |= set(self.extra_stop_words)
        if self.lowercase:
            base = {w.lower() for w in base}
        return sorted(base) if base else None


def make_vectorizer(rule: VocabRule, min_df: int | None = None) -> CountVectorizer:
    """A CountVectorizer implementing ``rule`` (shared by eq. 3 and BERTopic's vectorizer_model)."""
    return CountVectorizer(
        stop_words=rule.stop_word_list(),
        token_pattern=rule.token_pattern,
        lowercase=rule.lowercase,
        min_df=rule.min_df if min_df is None else min_df,
    )


def _join(cluster: str | Sequence[str]) -> str:
    return cluster if isinstance(cluster, str) else " ".join(cluster)


def c_tf_idf(
    docs_per_cluster: Sequence[str | Sequence[str]], rule: VocabRule | None = None
) -> tuple[np.ndarray, list[str]]:
    """Eq. 3 scores, shape (L, V), and the vocabulary (sorted alphabetically).

    ``docs_per_cluster[l]`` is either the captions of cluster l or one already-joined string.
    A cluster with no words at all (N_l = 0) gets a row of zeros rather than 0/0 = nan.
    """
    scores, vocab, _ = c_tf_idf_with_counts(docs_per_cluster, rule)
    return scores, vocab


def c_tf_idf_with_counts(
    docs_per_cluster: Sequence[str | Sequence[str]], rule: VocabRule | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Like :func:`c_tf_idf` but also returns the count matrix N_{w,l} (needed for tie-breaks)."""
    rule = rule or VocabRule()
    if len(docs_per_cluster) == 0:
        raise ValueError("c_tf_idf needs at least one cluster")
    if rule.n_l not in ("vocab", "all_tokens"):
        raise ValueError(f"VocabRule.n_l must be 'vocab' or 'all_tokens', got {rule.n_l!r}")
    docs = [_join(c) for c in docs_per_cluster]
    vec = make_vectorizer(rule)
    try:
        counts = vec.fit_transform(docs).toarray().astype(np.float64)  # N_{w,l}
    except ValueError as exc:  # sklearn: "empty vocabulary" / "no terms remain"
        raise ValueError(f"c_tf_idf: no word survives the vocabulary rule {rule} ({exc})") from exc
    vocab = list(vec.get_feature_names_out())
    L = counts.shape[0]
    L_w = (counts > 0).sum(axis=0)
    idf = np.log(L / (L_w + 1.0))
    if rule.n_l == "vocab":
        N_l = counts.sum(axis=1)
    else:
        all_vec = CountVectorizer(token_pattern=rule.token_pattern, lowercase=rule.lowercase)
        N_l = np.asarray(all_vec.fit_transform(docs).sum(axis=1)).ravel().astype(np.float64)
    tf = np.divide(counts, N_l[:, None], out=np.zeros_like(counts), where=N_l[:, None] > 0)
    return tf * idf[None, :], vocab, counts


def topic_words(
    scores: np.ndarray, vocab: Sequence[str], counts: np.ndarray | None = None, atol: float = 1e-12
) -> list[str | None]:
    """The highest eq.-3 word of every cluster.

    Only words that occur in the cluster are eligible (``counts > 0``; without ``counts``, words
    with a non-zero score) -- an absent word scores 0, which would otherwise beat the negative scores
    of words present in every cluster.  Tie-break: among eligible words within ``atol`` of the best
    score, the alphabetically first wins, so the result never depends on hash or insertion order.
    A cluster with no eligible word returns None.
    """
    scores = np.asarray(scores)
    present = (np.asarray(counts) > 0) if counts is not None else (scores != 0)
    out: list[str | None] = []
    for row, ok in zip(scores, present):
        if not ok.any():
            out.append(None)
            continue
        best = row[ok].max()
        idx = np.flatnonzero(ok & (row >= best - atol))
        out.append(min(vocab[i] for i in idx))
    return out


def eq3_topic_words(
    docs_per_cluster: Sequence[str | Sequence[str]], rule: VocabRule | None = None
) -> list[str | None]:
    """One call from captions-per-cluster to the eq.-3 topic word of each cluster."""
    scores, vocab, counts = c_tf_idf_with_counts(docs_per_cluster, rule)
    return topic_words(scores, vocab, counts)


def bertopic_topic_words(model: Any, topic_id: int, top_n: int = 5) -> list[str]:
    """BERTopic's own c-TF-IDF words for a topic (``model.get_topic``), for comparison with eq. 3."""
    got = model.get_topic(int(topic_id))
    if not got:
        return []
    return [w for w, _ in got[:top_n] if w]


def eq3_score(n_wl: int, n_l: int, L: int, l_w: int) -> float:
    """Eq. 3 for a single word, written out: handy for tests and notebooks."""
    return (n_wl / n_l) * math.log(L / (l_w + 1))
