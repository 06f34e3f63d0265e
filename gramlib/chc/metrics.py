"""How well CHC recovers the mini world's ground truth (concepts, styles, mismatched pairs).

These numbers have no counterpart in the paper (CC3M has no labels); they tell us whether the
topic/domain hierarchy that GRAM's tasks are sampled from is meaningful on generated data.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Mapping, Sequence

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

__all__ = [
    "topic_nmi",
    "majority_concepts",
    "concept_coverage",
    "topic_word_accuracy",
    "domain_style_purity",
    "domain_purity_chance",
]


def _valid(topic_ids: np.ndarray, include_outliers: bool) -> np.ndarray:
    return np.ones(len(topic_ids), bool) if include_outliers else np.asarray(topic_ids) >= 0


def topic_nmi(topic_ids: Sequence[int], concepts: Sequence[Hashable], include_outliers: bool = False) -> float:
    """NMI between topics and true concepts (sklearn, arithmetic mean); outliers (-1) excluded by default."""
    t, c = np.asarray(topic_ids), np.asarray(concepts, dtype=object)
    m = _valid(t, include_outliers)
    if m.sum() == 0:
        return float("nan")
    return float(normalized_mutual_info_score(c[m].astype(str), t[m]))


def majority_concepts(topic_ids: Sequence[int], concepts: Sequence[Hashable]) -> dict[int, Hashable]:
    """Most frequent true concept of every topic (ties: smallest concept as string), outliers skipped."""
    t, c = np.asarray(topic_ids), list(concepts)
    groups: dict[int, Counter] = {}
    for ti, ci in zip(t.tolist(), c):
        if ti >= 0:
            groups.setdefault(ti, Counter())[ci] += 1
    out = {}
    for ti, cnt in groups.items():
        best = max(cnt.values())
        out[ti] = min((k for k, v in cnt.items() if v == best), key=str)
    return out


def concept_coverage(topic_ids: Sequence[int], concepts: Sequence[Hashable], all_concepts: Sequence[Hashable] | None = None) -> float:
    """Fraction of concepts that are the majority concept of at least one topic."""
    universe = set(all_concepts) if all_concepts is not None else set(concepts)
    if not universe:
        return float("nan")
    return len(set(majority_concepts(topic_ids, concepts).values()) & universe) / len(universe)


def topic_word_accuracy(
    topic_ids: Sequence[int],
    concepts: Sequence[Hashable],
    topic_word: Mapping[int, str | None],
    synonyms: Mapping[Hashable, set[str]],
) -> float:
    """Fraction of topics whose eq.-3 word is its majority concept's name or one of its synonyms.

    Compared case-insensitively; a concept absent from ``synonyms`` matches its own name only.
    """
    maj = majority_concepts(topic_ids, concepts)
    if not maj:
        return float("nan")
    hits = 0
    for t, c in maj.items():
        ok = {str(c).lower()} | {s.lower() for s in synonyms.get(c, set())}
        w = topic_word.get(t)
        hits += int(w is not None and w.lower() in ok)
    return hits / len(maj)


def domain_style_purity(topic_ids: Sequence[int], domain_ids: Sequence[int], styles: Sequence[Hashable]) -> float:
    """Pair-weighted purity of domains w.r.t. the true style: sum over (topic, domain) cells of the
    majority style count, divided by the number of pairs with a topic (outliers skipped)."""
    t, d = np.asarray(topic_ids), np.asarray(domain_ids)
    s = np.asarray([str(x) for x in styles])
    m = (t >= 0) & (d >= 0)
    if m.sum() == 0:
        return float("nan")
    cells: dict[tuple[int, int], Counter] = {}
    for ti, di, si in zip(t[m].tolist(), d[m].tolist(), s[m].tolist()):
        cells.setdefault((ti, di), Counter())[si] += 1
    return sum(max(c.values()) for c in cells.values()) / int(m.sum())


def domain_purity_chance(
    topic_ids: Sequence[int], domain_ids: Sequence[int], styles: Sequence[Hashable], seeds: Sequence[int] = (0, 1, 2, 3, 4)
) -> float:
    """Chance level of :func:`domain_style_purity`: shuffle domain labels inside each topic (same
    domain sizes, random membership) and average the purity over ``seeds``."""
    t, d = np.asarray(topic_ids), np.asarray(domain_ids)
    vals = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        shuffled = d.copy()
        for ti in np.unique(t[t >= 0]):
            idx = np.flatnonzero(t == ti)
            shuffled[idx] = rng.permutation(d[idx])
        vals.append(domain_style_purity(t, shuffled, styles))
    return float(np.mean(vals))
