"""Caption clean-up before Sentence-BERT and eq. 3: boilerplate phrases removed, case-insensitively.

Why a step of its own: left in, Sentence-BERT clusters web captions by how a picture looks or where
it was posted, while style belongs to CHC's *visual-domain* level. The noise filter (the backbone's
image-text score) always sees the raw captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TextConfig:
    """Caption clean-up before Sentence-BERT and eq. 3 (never before the backbone's noise filter).

    Web captions carry boilerplate that says how a picture looks ("a pencil drawing of"), where it
    is ("for sale", "hd wallpaper") or nothing ("look at this").  Left in, Sentence-BERT clusters by
    that boilerplate -- style belongs to the *visual domain* level of CHC, not to the semantic
    topic.  ``strip_phrases`` are removed case-insensitively as whole words/phrases, longest first;
    a caption that would become empty keeps its original text.  Empty list = the paper's raw text.
    """

    strip_phrases: list[str] = field(default_factory=list)
    # learned clean-up: phrases frequent in most topics of a first clustering of the captions are
    # boilerplate (see :func:`learn_stop_phrases`); 0 switches it off
    learn_topic_fraction: float = 0.0  # a phrase in at least this fraction of the first pass's topics ...
    learn_min_share: float = 0.01  # ... in at least this share of each such topic's captions
    learn_max_words: int = 4  # longest phrase considered
    learn_max_share: float = 0.5  # a phrase this frequent in some topic is that topic's word, never boilerplate
    learn_rounds: int = 1  # cluster, learn, strip, and again: style topics of a raw first pass hide style words

    def __post_init__(self) -> None:
        if not 0.0 <= self.learn_topic_fraction <= 1.0:
            raise ValueError(f"chc.text.learn_topic_fraction must be in [0, 1], got {self.learn_topic_fraction}")
        if not 0.0 < self.learn_min_share <= 1.0:
            raise ValueError(f"chc.text.learn_min_share must be in (0, 1], got {self.learn_min_share}")
        if not self.learn_min_share <= self.learn_max_share <= 1.0:
            raise ValueError(f"chc.text.learn_max_share must be in [learn_min_share, 1], got {self.learn_max_share}")
        if self.learn_rounds < 1:
            raise ValueError(f"chc.text.learn_rounds must be >= 1, got {self.learn_rounds}")
        if self.learn_max_words < 1:
            raise ValueError(f"chc.text.learn_max_words must be >= 1, got {self.learn_max_words}")

    @property
    def learns(self) -> bool:
        return self.learn_topic_fraction > 0


def clean_captions(captions: Sequence[str], cfg: TextConfig) -> list[str]:
    """Captions with ``cfg.strip_phrases`` removed (see :class:`TextConfig`); order preserved."""
    if not cfg.strip_phrases:
        return list(captions)
    phrases = sorted({p.strip().lower() for p in cfg.strip_phrases if p.strip()}, key=len, reverse=True)
    pat = re.compile(r"(?<![\w#-])(?:" + "|".join(re.escape(p) for p in phrases) + r")(?![\w-])", re.IGNORECASE)
    out = []
    for c in captions:
        t = re.sub(r"\s+", " ", re.sub(r"\s*,\s*", " ", pat.sub(" ", c))).strip(" ,")
        out.append(t if t else c)
    return out


def learn_stop_phrases(captions: Sequence[str], topics: Sequence[int], cfg: TextConfig,
                       token_pattern: str = r"(?u)\b[a-zA-Z]+(?:-[a-zA-Z]+)*\b") -> list[str]:
    """Boilerplate phrases learned from the corpus: word n-grams (1..``learn_max_words``, not made of stop
    words alone) that occur in at least ``learn_min_share`` of the captions of at least
    ``learn_topic_fraction`` of the topics of a first clustering, and in no topic in more than
    ``learn_max_share`` of its captions (there it would be the topic's own word: "sign" of "dollar sign").

    Why this rule: a topic is about a concept, so its own words concentrate in few topics, while
    phrases about how a picture looks or where it was posted ("a pencil drawing of", "for sale") recur
    in nearly every topic. Only a clustering tells the two apart; a corpus-wide frequency cannot (a
    concept name of a large topic is as frequent as a filler). Outlier captions (topic -1) are ignored.
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    topics = np.asarray(topics)
    if len(topics) != len(captions):
        raise ValueError(f"learn_stop_phrases: {len(topics)} topics for {len(captions)} captions")
    keep = topics >= 0
    ids = np.unique(topics[keep])
    if len(ids) < 2:
        return []
    vec = CountVectorizer(ngram_range=(1, cfg.learn_max_words), token_pattern=token_pattern, lowercase=True,
                          binary=True)
    x = vec.fit_transform([c for c, k in zip(captions, keep) if k]).tocsc()
    t = topics[keep]
    # share of each topic's captions containing each phrase, (topics, phrases), sparse: a CC3M-sized
    # corpus has millions of captions and phrases
    rows = np.searchsorted(ids, t)
    onehot = sparse.csr_matrix((np.ones(len(t), dtype=np.float32), (rows, np.arange(len(t)))), shape=(len(ids), len(t)))
    sizes = np.bincount(rows, minlength=len(ids)).astype(np.float64)
    share = sparse.diags(1.0 / sizes) @ (onehot @ x).tocsr()
    coverage = np.asarray((share >= cfg.learn_min_share).sum(axis=0)).ravel() / len(ids)
    peak = share.max(axis=0).toarray().ravel()
    names = vec.get_feature_names_out()
    out = []
    for name, cov, top in zip(names, coverage, peak):
        if cov >= cfg.learn_topic_fraction and top <= cfg.learn_max_share and not set(name.split()) <= ENGLISH_STOP_WORDS:
            out.append(str(name))
    return sorted(out, key=lambda p: (-len(p.split()), p))
