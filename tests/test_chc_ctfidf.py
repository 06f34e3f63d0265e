"""Eq. 3 of the GRAM paper, checked against scores written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gramlib.chc import VocabRule, bertopic_topic_words, c_tf_idf, eq3_score, eq3_topic_words, topic_words
from gramlib.chc.ctfidf import c_tf_idf_with_counts

# Three tiny clusters. With English stop words ('of', 'on', 'the') removed and the default token
# pattern (>= 2 letters, so 'a' is never a token) the words per cluster are:
#   C0: photo circle circle table image                 N_0 = 5
#   C1: sketch star star paper star art image           N_1 = 7
#   C2: photo house house sketch image                  N_2 = 5
# L = 3; L_w: image 3, photo 2, sketch 2, every other word 1.
CLUSTERS = [
    ["a photo of a circle", "a circle on a table image"],
    ["a sketch of a star", "the star on paper", "star art image"],
    ["a photo of the house", "house sketch image"],
]
L = 3


def idf(l_w: int) -> float:
    return math.log(L / (l_w + 1))


EXPECTED = {
    # word: (score in C0, C1, C2)
    "art": (0.0, 1 / 7 * idf(1), 0.0),
    "circle": (2 / 5 * idf(1), 0.0, 0.0),
    "house": (0.0, 0.0, 2 / 5 * idf(1)),
    "image": (1 / 5 * idf(3), 1 / 7 * idf(3), 1 / 5 * idf(3)),  # in every cluster: log(3/4) < 0
    "paper": (0.0, 1 / 7 * idf(1), 0.0),
    "photo": (1 / 5 * idf(2), 0.0, 1 / 5 * idf(2)),  # log(3/3) = 0
    "sketch": (0.0, 1 / 7 * idf(2), 1 / 5 * idf(2)),
    "star": (0.0, 3 / 7 * idf(1), 0.0),
    "table": (1 / 5 * idf(1), 0.0, 0.0),
}


def test_eq3_matches_hand_computation():
    scores, vocab = c_tf_idf(CLUSTERS, VocabRule(stop_words="english"))
    assert vocab == sorted(EXPECTED)  # stop words and one-letter tokens are gone
    want = np.array([EXPECTED[w] for w in vocab]).T
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-12)
    assert scores[0, vocab.index("image")] == pytest.approx(0.2 * math.log(0.75))
    assert scores[0, vocab.index("image")] < 0  # the paper's idf is negative when L_w = L
    assert topic_words(scores, vocab) == ["circle", "star", "house"]
    assert eq3_topic_words(CLUSTERS) == ["circle", "star", "house"]
    assert eq3_score(3, 7, 3, 1) == pytest.approx(3 / 7 * math.log(1.5))


def test_eq3_without_stop_words_counts_them():
    rule = VocabRule(stop_words=None)
    scores, vocab = c_tf_idf(CLUSTERS, rule)
    # C1 now: sketch of star the star on paper star art image -> N_1 = 10; 'on' in C0 and C1 -> L_w=2
    assert {"of", "on", "the"} <= set(vocab)
    assert scores[1, vocab.index("star")] == pytest.approx(3 / 10 * idf(1))
    assert scores[1, vocab.index("on")] == pytest.approx(1 / 10 * idf(2))
    assert scores[2, vocab.index("the")] == pytest.approx(1 / 7 * idf(2))  # C2: photo of the house house sketch image


def test_eq3_n_l_all_tokens_changes_scale_not_words():
    rule = VocabRule(stop_words="english", n_l="all_tokens")
    scores, vocab = c_tf_idf(CLUSTERS, rule)
    # C0 tokens incl. stop words: photo of circle circle on table image -> N_0 = 7
    assert scores[0, vocab.index("circle")] == pytest.approx(2 / 7 * idf(1))
    assert topic_words(scores, vocab) == ["circle", "star", "house"]


def test_extra_stop_words_and_min_df():
    scores, vocab = c_tf_idf(CLUSTERS, VocabRule(extra_stop_words=["circle"]))
    assert "circle" not in vocab
    assert topic_words(scores, vocab)[0] == "table"  # 1/4 * log(3/2), the only positive word left
    _, vocab2 = c_tf_idf(CLUSTERS, VocabRule(min_df=2))  # min_df counts clusters
    assert vocab2 == ["image", "photo", "sketch"]


def test_tie_break_is_alphabetical_and_absent_words_never_win():
    scores, vocab, counts = c_tf_idf_with_counts(["zebra apple", "kiwi", "lemon"])
    assert scores[0, vocab.index("zebra")] == scores[0, vocab.index("apple")]
    assert topic_words(scores, vocab, counts)[0] == "apple"
    # 'dog' is in every cluster: C1's only word has a negative score, yet absent words (score 0)
    # must not be chosen.
    scores, vocab, counts = c_tf_idf_with_counts(["dog cat", "dog", "dog"])
    assert scores[1, vocab.index("dog")] == pytest.approx(math.log(3 / 4))
    assert topic_words(scores, vocab, counts) == ["cat", "dog", "dog"]
    # a word present in L-1 clusters has idf log(L/L) = 0 and is still eligible
    scores, vocab, counts = c_tf_idf_with_counts(["dog", "dog", "cat"])
    assert topic_words(scores, vocab, counts) == ["dog", "dog", "cat"]


def test_single_cluster_and_empty_cluster():
    scores, vocab, counts = c_tf_idf_with_counts(["red red blue", "the of"])
    assert np.all(scores[1] == 0)  # N_l = 0: zeros, not nan
    # L = 2: red and blue both have L_w = 1, idf log(2/2) = 0 -> tie at 0, alphabetical wins
    assert topic_words(scores, vocab, counts) == ["blue", None]
    one, v1 = c_tf_idf([["red red blue"]])
    assert one[0, v1.index("red")] == pytest.approx(2 / 3 * math.log(1 / 2))  # L = 1: every idf < 0
    with pytest.raises(ValueError, match="at least one cluster"):
        c_tf_idf([])
    with pytest.raises(ValueError, match="no word survives"):
        c_tf_idf(["the of", "and"])


def test_bertopic_words_accessor():
    class Stub:
        def get_topic(self, i):
            return [("star", 0.9), ("sketch", 0.5), ("", 0.0)] if i == 0 else False

    assert bertopic_topic_words(Stub(), 0) == ["star", "sketch"]
    assert bertopic_topic_words(Stub(), 7) == []
