"""Task generation (§3.3): single-domain support, query over all domains, seeds, bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from gramlib.gram.tasks import (Task, TaskConfig, pool_from_labels, pool_from_pairs, sample_task, sample_tasks,
                           truth_pairs)


def make_pairs(n_topics: int = 8, n_domains: int = 3, per_domain: int = 12, seed: int = 0,
               small_topic: int | None = None) -> pd.DataFrame:
    """A CHC-shaped table: topics x domains, plus dropped pairs (topic -1) and one small topic."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_topics):
        n = 2 if t == small_topic else per_domain
        for u in range(n_domains):
            for _ in range(n):
                rows.append({"topic_id": t, "topic_word": f"word{t}", "domain_id": u, "kept": True})
    for _ in range(20):  # dropped by the noise filter
        rows.append({"topic_id": -1, "topic_word": "", "domain_id": -1, "kept": False})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.insert(0, "key", [f"{i:09d}" for i in range(len(df))])
    df.insert(1, "caption", ["a caption"] * len(df))
    return df


CFG = TaskConfig(ways=4, shots=3, query=6, domain_shift=True)


def test_support_single_domain_query_covers_domains():
    pairs = make_pairs()
    pool = pool_from_pairs(pairs, CFG)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = sample_task(pool, rng)
        assert len(set(t.classnames)) == CFG.ways
        assert t.support_idx.shape == (CFG.ways * CFG.shots,) and t.query_idx.shape == (CFG.ways * CFG.query,)
        assert not set(t.support_idx) & set(t.query_idx)  # disjoint
        for k, name in enumerate(t.classnames):
            s = pairs.iloc[t.support_idx[t.support_y == k]]
            q = pairs.iloc[t.query_idx[t.query_y == k]]
            assert (s.topic_word == name).all() and (q.topic_word == name).all()
            assert s.kept.all() and q.kept.all()
            assert s.domain_id.nunique() == 1 and s.domain_id.iloc[0] == t.support_domain[k]  # one domain
            assert set(q.domain_id) == {0, 1, 2}  # query: all domains of the class ...
            assert q.domain_id.value_counts().max() - q.domain_id.value_counts().min() <= 1  # ... balanced
            assert (t.support_dom[t.support_y == k] == s.domain_id.to_numpy()).all()
            assert (t.query_dom[t.query_y == k] == q.domain_id.to_numpy()).all()


def test_no_domain_shift_support_is_uniform():
    pairs = make_pairs()
    cfg = TaskConfig(ways=4, shots=3, query=6, domain_shift=False)
    t = sample_task(pool_from_pairs(pairs, cfg), 1)
    for k in range(cfg.ways):
        s = pairs.iloc[t.support_idx[t.support_y == k]]
        assert set(s.domain_id) == {0, 1, 2}
    assert (t.support_domain == -1).all()


def test_reproducible_from_seed():
    pool = pool_from_pairs(make_pairs(), CFG)
    a = sample_tasks(pool, np.random.default_rng(7), 3)
    b = sample_tasks(pool, np.random.default_rng(7), 3)
    c = sample_tasks(pool, np.random.default_rng(8), 3)
    key = lambda ts: [np.concatenate([t.support_idx, t.query_idx]).tolist() for t in ts]
    assert key(a) == key(b)
    assert key(a) != key(c)
    assert sample_task(pool, 3).classnames == sample_task(pool, 3).classnames
    # building from the table directly is the same as from its pool
    assert sample_task(make_pairs(), 5, CFG).query_idx.tolist() == sample_task(pool, 5).query_idx.tolist()


def test_small_topic_is_skipped_with_a_logged_count(caplog):
    with caplog.at_level(logging.WARNING, logger="gramlib.gram.tasks"):
        pool = pool_from_pairs(make_pairs(small_topic=2), CFG)  # 2 per domain = 6 < shots + query = 9
    assert len(pool) == 7 and "word2" not in pool.classnames
    assert pool.skipped == {"fewer images than shots+query": 1}
    assert "skipped 1 of 8" in caplog.text


def test_topic_without_a_large_enough_domain_is_skipped():
    # 3 domains x 2 images: 6 >= shots + query (1 + 5) is fine without shift, but no domain holds 3 shots
    cfg_shift = TaskConfig(ways=2, shots=3, query=3)
    pairs = make_pairs(n_topics=3, per_domain=2)
    with pytest.raises(ValueError, match="no class has enough images"):
        pool_from_pairs(pairs, cfg_shift)
    pool = pool_from_pairs(pairs, TaskConfig(ways=2, shots=3, query=3, domain_shift=False))
    assert len(pool) == 3


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="6-way tasks need 6 usable classes.*only 5 remain"):
        pool_from_pairs(make_pairs(n_topics=6, small_topic=0), TaskConfig(ways=6, shots=3, query=6))
    with pytest.raises(ValueError, match="no class has enough images"):
        pool_from_pairs(make_pairs(per_domain=1), CFG)
    with pytest.raises(ValueError, match="missing column"):
        pool_from_pairs(make_pairs().drop(columns="domain_id"), CFG)
    dropped = make_pairs().assign(kept=False)
    with pytest.raises(ValueError, match="no kept pair"):
        pool_from_pairs(dropped, CFG)
    with pytest.raises(ValueError, match="rebuild"):
        sample_task(pool_from_pairs(make_pairs(), CFG), 0, TaskConfig(ways=2, shots=3, query=6))
    with pytest.raises(ValueError):
        TaskConfig(ways=1)
    with pytest.raises(ValueError):
        TaskConfig(shots=0)


def test_ways_counts_distinct_topic_words():
    pairs = make_pairs(n_topics=4)
    pairs.loc[pairs.topic_id == 1, "topic_word"] = "word0"  # two topics share a word
    with pytest.raises(ValueError, match="only 3 remain"):
        pool_from_pairs(pairs, CFG)
    pool = pool_from_pairs(pairs, TaskConfig(ways=3, shots=3, query=6))
    for s in range(10):
        assert len(set(sample_task(pool, s).classnames)) == 3


def test_labelled_source_subsamples_classes():
    labels = np.repeat(np.arange(6), 10)
    pool = pool_from_labels(labels, [f"class_{i}" for i in range(6)], TaskConfig(ways=3, shots=2, query=4))
    assert pool.classnames[0] == "class 0" and all(len(m) == 1 for m in pool.members)  # one domain each
    t = sample_task(pool, 0)
    assert isinstance(t, Task)
    for k, c in enumerate(t.classes):
        assert (labels[t.support_idx[t.support_y == k]] == pool.class_ids[c]).all()
        assert (labels[t.query_idx[t.query_y == k]] == pool.class_ids[c]).all()
    with pytest.raises(ValueError, match="need 7 usable classes"):
        pool_from_labels(labels, [str(i) for i in range(6)], TaskConfig(ways=7, shots=2, query=4))


def test_truth_pairs_oracle_topics():
    truth = pd.DataFrame({"key": ["a", "b", "c", "d"], "concept": ["cat", "cat", "dog", "hot_dog"],
                          "style": ["photo", "sketch", "photo", "photo"],
                          "mismatched": [False, False, True, False], "caption_concept": ["cat"] * 4})
    p = truth_pairs(truth)
    assert p.topic_id.tolist() == [0, 0, -1, 2] and p.kept.tolist() == [True, True, False, True]
    assert p.domain_id.tolist() == [0, 1, 0, 0] and p.topic_word.iloc[3] == "hot dog"
