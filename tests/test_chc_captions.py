"""Caption clean-up before Sentence-BERT: the fixed strip list and the clean-up learned from a first
clustering (phrases in most topics are boilerplate), checked against hand-counted shares."""

from __future__ import annotations

import pytest

from gramlib.chc.captions import TextConfig, clean_captions, learn_stop_phrases

CAPTIONS = ["a sketch of cat", "cat for sale", "a cat",
            "a sketch of dog", "dog", "dog for sale",
            "bird for sale", "a bird", "bird",
            "cat for sale"]  # an outlier (topic -1): never counted
TOPICS = [0, 0, 0, 1, 1, 1, 2, 2, 2, -1]


def test_learned_phrases_are_those_in_most_topics():
    # shares by hand: "sketch" 1/3, 1/3, 0 -> in 2 of 3 topics; "sale" 1/3 in all three; "cat" in one;
    # "a", "for", "of" are stop words alone and never learned
    cfg = TextConfig(learn_topic_fraction=0.6, learn_min_share=0.3)
    assert learn_stop_phrases(CAPTIONS, TOPICS, cfg) == ["a sketch of", "a sketch", "for sale", "sketch of",
                                                       "sale", "sketch"]
    # all three topics required: only the sale phrases
    assert learn_stop_phrases(CAPTIONS, TOPICS, TextConfig(learn_topic_fraction=1.0, learn_min_share=0.3)) == [
        "for sale", "sale"]
    # a share above one caption in three: nothing is frequent enough in any topic but its own word
    assert learn_stop_phrases(CAPTIONS, TOPICS, TextConfig(learn_topic_fraction=0.6, learn_min_share=0.5)) == []
    cleaned = clean_captions(CAPTIONS, TextConfig(strip_phrases=learn_stop_phrases(CAPTIONS, TOPICS, cfg)))
    assert cleaned[:3] == ["cat", "cat", "a cat"]


def test_learning_needs_topics_and_checks_its_settings():
    assert learn_stop_phrases(CAPTIONS, [0] * len(CAPTIONS), TextConfig(learn_topic_fraction=0.5)) == []
    with pytest.raises(ValueError, match="topics for"):
        learn_stop_phrases(CAPTIONS, TOPICS[:-1], TextConfig(learn_topic_fraction=0.5))
    with pytest.raises(ValueError, match="learn_topic_fraction"):
        TextConfig(learn_topic_fraction=1.5)
    with pytest.raises(ValueError, match="learn_min_share"):
        TextConfig(learn_min_share=0.0)
    assert not TextConfig().learns and TextConfig(learn_topic_fraction=0.5).learns
