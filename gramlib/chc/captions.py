"""Caption clean-up before Sentence-BERT and eq. 3: boilerplate phrases removed, case-insensitively.

Why a step of its own: left in, Sentence-BERT clusters web captions by how a picture looks or where
it was posted, while style belongs to CHC's *visual-domain* level. The noise filter (the backbone's
image-text score) always sees the raw captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field


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
