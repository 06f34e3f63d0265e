"""Web-style captions for rendered images: templates, synonyms, attributes and distractor words.

Captions are deliberately noisy, like alt-text: the style is named only most of the time, a concept
is called by any of its synonyms, filler words and hashtags are common, and colour words are rare
(they would let a contrastive model match pairs without learning shape).
"""

from __future__ import annotations

import numpy as np

from gramlib.world.spec import Concept, WorldSpec

_NO_ARTICLE = {"my", "look at this"}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def make_caption(concept: Concept, style: str, attrs: dict, spec: WorldSpec, rng: np.random.Generator) -> str:
    """One caption for an image of ``concept`` drawn in ``style`` (attrs come from the renderer)."""
    cs = spec.captions
    if rng.uniform() < cs.style_phrase_p:
        phrase = _pick(spec.style_phrases[style], rng)
    else:
        phrase = _pick(cs.generic_phrases, rng)
    words = []
    if attrs.get("size") and rng.uniform() < cs.size_word_p:
        words.append(_pick(cs.size_words[attrs["size"]], rng))
    if rng.uniform() < cs.colour_word_p:
        words.append(attrs["colour"])
    name = _pick(concept.synonyms, rng)
    noun = " ".join(words + [name])
    if phrase in _NO_ARTICLE:
        text = f"{phrase} {noun}"
    elif phrase.startswith("a glowing"):
        text = f"{phrase} {noun}"
    else:
        text = f"{phrase} {_article(noun)} {noun}".strip()
    if rng.uniform() < cs.context_p:
        ctx = _pick(cs.contexts, rng)
        text = f"{text}, {ctx}" if rng.uniform() < 0.5 else f"{text} {ctx}"
    return text.strip()


def _pick(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]
