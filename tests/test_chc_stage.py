"""The CHC stage on the smoke profile: artifacts, complete rows, metrics keys, and bad input."""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fixtures import make_shards, raw_tar
from gramlib.chc.evaluation import REPORT_KEYS, accepted_topic_words, report_metrics
from gramlib.chc.stage import chc_config, chc_params, load_stage, run_stage
from gramlib.data.corpus import load_corpus


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stage(smoke, tmp_path_factory):
    out = tmp_path_factory.mktemp("chc_stage")
    cfg = dataclasses.replace(chc_config("smoke"), plot_coords="pca")  # the 2-D UMAP only feeds the notebook
    return run_stage(smoke, out_dir=out / "chc", cache_dir=out / "cache", cfg=cfg)


def test_params_block_merges_profile_overrides():
    params = {"chc": {"topics": {"min_cluster_size": 60, "n_neighbors": 30}, "filter": {"threshold": 10.0}},
              "profiles": {"smoke": {"chc": {"topics": {"min_cluster_size": 15}}}, "mini": {}}}
    assert chc_params("smoke", params)["topics"] == {"min_cluster_size": 15, "n_neighbors": 30}
    assert chc_params("mini", params)["topics"]["min_cluster_size"] == 60
    assert chc_config("smoke", params).topics.min_cluster_size == 15
    with pytest.raises(ValueError, match="params.yaml: chc: unknown key 'bogus'"):
        chc_config("mini", {"chc": {"bogus": 1}, "profiles": {"mini": {}}})
    with pytest.raises(ValueError, match="params.yaml: profiles.smoke.chc.topics: unknown key 'min_cluster'"):
        chc_config("smoke", {"profiles": {"smoke": {"chc": {"topics": {"min_cluster": 3}}}}})


def test_stage_writes_artifacts(stage):
    out = stage.out_dir
    for name in ("pairs.parquet", "topic_words.csv", "config.json", "metrics.json", "read_stats.json"):
        assert (out / name).exists(), name
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) == stage.read_stats["samples"] == 1500
    assert pairs["key"].is_unique
    assert set(pairs.drop_reason.unique()) <= {"", "noise", "outlier", "bad_caption"}
    back = load_stage(stage.profile, out_dir=out)
    assert back.pairs.equals(pairs)
    assert set(back.topic_words.topic_id) == set(pairs.loc[pairs.kept, "topic_id"])


def test_every_kept_pair_has_topic_word_and_domain(stage):
    kept = stage.pairs[stage.pairs.kept]
    assert len(kept) > 0.8 * len(stage.pairs)
    assert (kept.topic_id >= 0).all()  # outliers are reassigned in every profile's config
    assert kept.topic_word.notna().all() and (kept.topic_word.str.len() > 0).all()
    assert (kept.domain_id >= 0).all()
    dropped = stage.pairs[~stage.pairs.kept]
    assert (dropped.topic_id == -1).all() and dropped.topic_word.isna().all()
    tw = stage.topic_words.set_index("topic_id")
    for tid, grp in kept.groupby("topic_id"):
        assert (grp.topic_word == tw.loc[tid, "eq3_word"]).all()
        assert grp.domain_id.nunique() == tw.loc[tid, "n_domains"]


def test_metrics_against_ground_truth(stage):
    m = stage.metrics
    rep = report_metrics(m)
    assert tuple(rep) == REPORT_KEYS
    assert rep["n_pairs_kept"] == int(stage.pairs.kept.sum())
    assert rep["n_topics"] == len(stage.topic_words)
    for k in ("nmi_topic_concept", "topic_word_accuracy", "filter_precision", "filter_recall",
              "domain_style_purity", "domain_style_purity_chance", "concept_coverage"):
        assert 0.0 <= rep[k] <= 1.0, (k, rep[k])
    # a real, if tiny, signal on the smoke world (not the mini bars)
    assert rep["nmi_topic_concept"] > 0.3
    assert rep["filter_recall"] > 0.2


def test_accepted_topic_words_only_distinctive_tokens():
    syn = {"letter_a": ["letter a", "capital a"], "letter_b": ["letter b", "capital b"],
           "dollar_sign": ["dollar sign", "dollar symbol"], "hash_sign": ["hash sign", "pound sign"],
           "star": ["star", "five-pointed star"]}
    ok = accepted_topic_words(syn)
    assert {"letter a", "capital a", "letter_a", "a"} <= ok["letter_a"] and "letter" not in ok["letter_a"]
    assert "dollar" in ok["dollar_sign"] and "sign" not in ok["dollar_sign"]
    assert {"hash", "pound"} <= ok["hash_sign"]
    assert {"star", "five-pointed"} <= ok["star"] and "five" not in ok["star"]


# --- bad input -------------------------------------------------------------------------------

def _bad_corpus(root: Path, src_shards: list[Path]) -> Path:
    """The smoke shards plus an empty shard and a shard with an empty and a non-UTF-8 caption."""
    cc = root / "cc3m"
    cc.mkdir(parents=True)
    for p in src_shards:
        shutil.copy(p, cc / p.name)
    n = len(src_shards)
    raw_tar(cc / f"{n:05d}.tar", [])
    jpg = _jpeg()
    raw_tar(cc / f"{n + 1:05d}.tar", [("900000000.jpg", jpg), ("900000000.txt", b""),
                                      ("900000001.jpg", jpg), ("900000001.txt", b"\xff\xfe\x00"),
                                      ("900000002.jpg", jpg), ("900000002.txt", b"a photo of a star")])
    return cc


def test_empty_shard_and_bad_captions_are_skipped_with_counts(smoke, tmp_path, caplog):
    src = sorted((smoke.root / smoke.cc3m_dir).glob("*.tar"))[:1]
    cc = _bad_corpus(tmp_path, src)
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(cc)
    rs = corpus.read_stats
    assert rs["shards"] == 3 and len(rs["empty_shards"]) == 1
    assert rs["skipped_bad_caption"] == 2 and len(rs["skipped"]) == 2
    assert len(corpus) == rs["samples"] == 500 + 1
    assert "900000002" in corpus.keys and "900000000" not in corpus.keys
    assert all(isinstance(c, str) and c.strip() for c in corpus.captions)
    assert "skipping empty shard" in caplog.text and "2 bad caption(s), 1 empty shard(s)" in caplog.text
    with pytest.raises(ValueError, match="caption missing, empty or not UTF-8"):
        load_corpus(cc, on_corrupt="raise")


def test_shared_corpus_is_decoded_once_until_a_shard_changes(smoke, tmp_path):
    import os

    from gramlib.data.corpus import load_corpus_shared

    cc = tmp_path / "cc3m"
    cc.mkdir()
    for p in sorted((smoke.root / smoke.cc3m_dir).glob("*.tar"))[:2]:
        shutil.copy(p, cc / p.name)
    first = load_corpus_shared(cc)
    assert load_corpus_shared(cc) is first  # no second decode
    assert first.keys == load_corpus(cc).keys
    shard = sorted(cc.glob("*.tar"))[1]
    shard.unlink()  # a rewritten shard directory is read again
    again = load_corpus_shared(cc)
    assert again is not first and again.keys == load_corpus(cc).keys and len(again) < len(first)


def test_fewer_pairs_than_topics_need_raises(smoke, tmp_path):
    make_shards(tmp_path / "data" / "cc3m", n=7, shard_size=3)
    prof = dataclasses.replace(smoke, data_root=str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"7 readable pair\(s\).*needs at least 30"):
        run_stage(prof, cfg=chc_config("smoke"), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_no_readable_pair_raises(tmp_path):
    raw_tar(tmp_path / "cc3m" / "00000.tar", [])
    raw_tar(tmp_path / "cc3m" / "00001.tar", [("000010000.jpg", _jpeg()), ("000010000.txt", b"   ")])
    with pytest.raises(ValueError, match=r"no readable image-text pair in 2 shard\(s\) \(1 empty, 1 sample\(s\) skipped\)"):
        load_corpus(tmp_path / "cc3m")
    with pytest.raises(FileNotFoundError, match="shard not found"):
        load_corpus(tmp_path / "nothing")


def test_learned_clean_up_strips_boilerplate_not_concept_names(stage):
    """The smoke profile learns its caption clean-up from a first clustering (issue 14): what it strips
    is the world's style and filler vocabulary, never a word of a concept's names."""
    import json

    from gramlib.world.build import world_spec

    text = json.loads((stage.out_dir / "text_config.json").read_text())
    learned = text["learned_stop_phrases"]
    assert text["learn_topic_fraction"] > 0 and learned and stage.metrics["n_learned_stop_phrases"] == len(learned)
    spec = world_spec(stage.profile.world)
    concept_words = {w for c in spec.concepts.values() for s in c.synonyms for w in s.split()}
    boiler_words = {w for ps in spec.style_phrases.values() for p in ps for w in p.split()}
    boiler_words |= {w for p in (*spec.captions.generic_phrases, *spec.captions.contexts) for w in p.split()}
    single = [p for p in learned if len(p.split()) == 1]
    assert single and not set(single) & (concept_words - boiler_words)
    # the clustered captions are the cleaned ones; the raw caption is kept beside them
    kept = stage.pairs[stage.pairs.kept]
    assert (kept.caption != kept.raw_caption).mean() > 0.5
