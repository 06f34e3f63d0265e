"""CHC end to end on a tiny synthetic web corpus (concepts x styles, ~10 % mismatched pairs)."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest

from gramlib.chc import (
    CHCConfig,
    DomainConfig,
    FilterConfig,
    TopicConfig,
    cluster_domains,
    concept_coverage,
    domain_purity_chance,
    domain_style_purity,
    domains_for_size,
    embed_captions,
    filter_pairs,
    filter_report,
    load_sentence_encoder,
    pair_scores,
    run_chc,
    topic_nmi,
    topic_word_accuracy,
)
from gramlib.chc.topics import build_clusterer, build_reducer

CONCEPTS = {
    "circle": ["circle", "disc", "round shape"],
    "hexagon": ["hexagon", "six-sided shape"],
    "star": ["star"],
    "house": ["house", "cottage"],
}
STYLES = ["a pencil sketch of", "pixel art of", "an oil painting of", "a photo of"]
SIZES = ["a small", "a big", "a tiny", "a large", "a"]
TAILS = ["on paper", "free download", "#art", "on a table", "", "", ""]
SYNONYMS = {c: set(w for s in syn for w in s.split() if w not in {"shape", "round"}) | {c} for c, syn in CONCEPTS.items()}


def make_world(n_per: int = 12, mismatch: float = 0.1, dim: int = 32, seed: int = 0) -> dict:
    """Captions like 'an oil painting of a big star #art' with image/caption features that share a
    concept direction (and a style direction for images); mismatched pairs get another concept's caption."""
    rng = np.random.default_rng(seed)
    names = list(CONCEPTS)
    cdir = rng.normal(size=(len(names), dim))
    sdir = rng.normal(size=(len(STYLES), dim))
    caps, img, txt, conc, sty, bad = [], [], [], [], [], []
    for ci, c in enumerate(names):
        for si, s in enumerate(STYLES):
            for _ in range(n_per):
                mis = rng.random() < mismatch
                cc = int(rng.choice([j for j in range(len(names)) if j != ci])) if mis else ci
                word = str(rng.choice(CONCEPTS[names[cc]]))
                size = str(rng.choice(SIZES))
                art = "an" if size == "a" and word[0] in "aeiou" else size
                cap = f"{s} {art} {word} {rng.choice(TAILS)}".strip()
                caps.append(cap)
                img.append(cdir[ci] + 0.7 * sdir[si] + 0.3 * rng.normal(size=dim))
                txt.append(cdir[cc] + 0.3 * rng.normal(size=dim))
                conc.append(c)
                sty.append(si)
                bad.append(mis)
    return dict(captions=caps, img=np.array(img, np.float32), txt=np.array(txt, np.float32),
                concepts=np.array(conc), styles=np.array(sty), mismatched=np.array(bad))


@pytest.fixture(scope="module")
def world() -> dict:
    return make_world()


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder("all-MiniLM-L6-v2")


def fast_cfg(**topic_kw) -> CHCConfig:
    """PCA + k-means: the pipeline test is about wiring, not UMAP."""
    t = dict(reducer="pca", n_components=5, clusterer="kmeans", k=4, min_cluster_size=5)
    t.update(topic_kw)
    return CHCConfig(
        filter=FilterConfig(rule="percentile", threshold=10.0),
        topics=TopicConfig(**t),
        domains=DomainConfig(n_domains=4, min_domain_size=3),
        plot_coords="pca",
        show_progress_bar=False,
    )


# ---------------------------------------------------------------- noise filter


def test_pair_scores_and_filter_report(world):
    s = pair_scores(world["img"], world["txt"])
    assert s.shape == (len(world["captions"]),) and np.all(np.abs(s) <= 1 + 1e-5)
    assert s[world["mismatched"]].mean() < s[~world["mismatched"]].mean()
    keep = filter_pairs(s, FilterConfig("percentile", 10.0))
    rep = filter_report(keep, world["mismatched"])
    assert rep["n_removed"] == (~keep).sum()
    assert rep["precision"] > 0.8 and rep["recall"] > 0.6 and rep["good_kept"] > 0.95
    keep_abs = filter_pairs(s, FilterConfig("absolute", 2.0))  # above any cosine: drop all
    assert not keep_abs.any()
    none = filter_report(np.ones(4, bool), np.array([1, 0, 0, 0], bool))
    assert np.isnan(none["precision"]) and none["recall"] == 0.0 and none["good_kept"] == 1.0


def test_filter_report_by_hand():
    keep = np.array([1, 0, 0, 1, 1, 0], bool)
    bad = np.array([0, 1, 0, 1, 0, 1], bool)
    rep = filter_report(keep, bad)
    assert rep["precision"] == pytest.approx(2 / 3)  # removed 1,2,5; mismatched among them: 1,5
    assert rep["recall"] == pytest.approx(2 / 3)  # mismatched 1,3,5; removed: 1,5
    assert rep["good_kept"] == pytest.approx(2 / 3)  # good 0,2,4; kept: 0,4


def test_filter_rejects_bad_input():
    with pytest.raises(ValueError):
        pair_scores(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError):
        filter_pairs(np.ones(3), FilterConfig("percentile", 150))
    with pytest.raises(ValueError):
        filter_pairs(np.ones(3), FilterConfig("bogus", 0))


# ---------------------------------------------------------------- encoder + cache


def test_encoder_is_offline_minilm_and_cache_is_mmapped(encoder, tmp_path, world):
    assert encoder.gram_model_name == "all-MiniLM-L6-v2"
    caps = world["captions"][:40]
    e1 = embed_captions(caps, encoder, tmp_path, show_progress_bar=False)
    assert e1.shape == (40, 384) and e1.dtype == np.float32
    assert np.allclose(np.linalg.norm(e1, axis=1), 1, atol=1e-4)
    files = list(tmp_path.glob("emb-*.npy"))
    assert len(files) == 1

    class Boom:
        gram_model_name = "all-MiniLM-L6-v2"

        def encode(self, *a, **k):  # a cache hit must not encode again
            raise AssertionError("re-encoded despite cache")

    e2 = embed_captions(caps, Boom(), tmp_path, show_progress_bar=False)
    assert isinstance(e2, np.memmap) and np.array_equal(np.asarray(e1), np.asarray(e2))
    e3 = embed_captions(caps[:-1] + ["a different caption"], encoder, tmp_path, show_progress_bar=False)
    assert len(list(tmp_path.glob("emb-*.npy"))) == 2 and not np.allclose(e3[-1], e1[-1])


def _vec(caption: str) -> np.ndarray:
    """A vector that tells captions apart, computed without the encoder code."""
    return np.array([len(caption), ord(caption[0]), ord(caption[-1]), sum(map(ord, caption))], dtype=np.float32)


class Counting:
    """A stand-in sentence encoder that records what it was asked to encode."""

    gram_model_name = "counting"

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, chunk, **kw):
        self.seen += list(chunk)
        return np.stack([_vec(c) for c in chunk])


def test_repeated_captions_are_encoded_once(tmp_path):
    caps = ["b star", "a circle", "b star", "c house", "a circle", "b star"]
    for cache, chunk in ((None, 2), (tmp_path, 2), (None, 100)):
        enc = Counting()
        out = np.asarray(embed_captions(caps, enc, cache, chunk_size=chunk, show_progress_bar=False))
        assert sorted(enc.seen) == ["a circle", "b star", "c house"]  # each distinct caption once
        expected = np.stack([_vec(c) for c in caps])
        assert np.array_equal(out, expected)  # caption order kept
    assert not list(tmp_path.glob("*.distinct.npy"))  # the side file is gone


def test_a_killed_caption_embedding_resumes_with_no_chunk_encoded_twice(tmp_path):
    caps = [f"caption {i % 23}" for i in range(60)]  # 23 distinct: 6 chunks of 4
    first = Counting()
    with pytest.raises(InterruptedError):
        embed_captions(caps, first, tmp_path, chunk_size=4, stop_after=2, show_progress_bar=False)
    assert len(first.seen) == 8 and len(list(tmp_path.glob("emb-*.parts/*.npy"))) == 2
    assert not list(tmp_path.glob("emb-*.npy"))  # no joined file from a killed job
    second = Counting()
    out = np.asarray(embed_captions(caps, second, tmp_path, chunk_size=4, show_progress_bar=False))
    assert len(second.seen) == 15 and set(first.seen).isdisjoint(second.seen)  # the rest, each once
    expected = np.stack([_vec(c) for c in caps])
    assert np.array_equal(out, expected)
    assert not list(tmp_path.glob("emb-*.parts"))  # parts joined and removed


@pytest.mark.timeout(600)
def test_caption_embeddings_on_ray_data_equal_the_in_process_ones(ray_cluster, encoder, world, tmp_path):
    from gramlib.chc.ray_embed import ray_chunk_encoder
    from gramlib.compute import ComputeConfig

    caps = world["captions"][:48]
    ref = np.asarray(embed_captions(caps, encoder, None, chunk_size=10, show_progress_bar=False))
    run = ray_chunk_encoder("all-MiniLM-L6-v2", ComputeConfig(backend="ray", num_cpus=2))
    with pytest.raises(InterruptedError):  # killed after one chunk, then resumed
        embed_captions(caps, encoder, tmp_path, chunk_size=10, encode_chunks=run, stop_after=1, show_progress_bar=False)
    assert len(list(tmp_path.glob("emb-*.parts/*.npy"))) == 1
    out = embed_captions(caps, encoder, tmp_path, chunk_size=10, encode_chunks=run, show_progress_bar=False)
    assert isinstance(out, np.memmap)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6, rtol=0)


def test_unknown_encoder_never_downloads():
    with pytest.raises(RuntimeError, match="never downloads"):
        load_sentence_encoder("someone/not-cached-model-xyz")


# ---------------------------------------------------------------- domains


def test_domains_for_size_rule():
    cfg = DomainConfig(n_domains=4, min_domain_size=3)
    assert domains_for_size(10, cfg) == 4
    assert domains_for_size(3, cfg) == 1  # 3 // 3
    assert domains_for_size(2, cfg) == 1  # max(1, 0)
    assert domains_for_size(3, dataclasses.replace(cfg, min_domain_size=1)) == 3
    assert domains_for_size(3, dataclasses.replace(cfg, small_topic="single")) == 1


def test_cluster_domains_small_topic_logged(caplog):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(23, 8))
    topics = np.array([0] * 20 + [1] * 2 + [-1])
    with caplog.at_level(logging.WARNING, logger="gramlib.chc.domains"):
        d = cluster_domains(feats, topics, DomainConfig(n_domains=3, min_domain_size=2))
    assert d[-1] == -1 and set(d[:20]) == {0, 1, 2} and set(d[20:22]) == {0}
    assert "topic 1: n=2 -> U'=1" in caplog.text
    d2 = cluster_domains(feats, topics, DomainConfig(n_domains=3, min_domain_size=2))
    assert np.array_equal(d, d2)


# ---------------------------------------------------------------- pipeline


def test_run_chc_fast_path(world, encoder, tmp_path):
    t0 = time.perf_counter()
    res = run_chc(world["captions"], world["img"], world["txt"], fast_cfg(), tmp_path / "cache",
                  keys=[f"k{i}" for i in range(len(world["captions"]))], encoder=encoder)
    elapsed = time.perf_counter() - t0
    p = res.pairs
    assert list(p.columns[:8]) == ["key", "caption", "score", "kept", "drop_reason", "topic_id", "topic_word", "domain_id"]
    assert len(p) == len(world["captions"])
    assert (p.loc[~p.kept, "topic_id"] == -1).all() and (p.loc[~p.kept, "domain_id"] == -1).all()
    assert (p.loc[~p.kept, "drop_reason"] == "noise").all()
    kept = p[p.kept]
    assert (kept.topic_id >= 0).all()  # k-means has no outliers
    assert res.embeddings.shape == (len(kept), 384) and res.reduced.shape == (len(kept), 5)
    assert res.coords_2d.shape == (len(kept), 2) and kept.x.notna().all()
    tw = res.topic_words
    assert list(tw.columns) == ["topic_id", "eq3_word", "eq3_score", "bertopic_words", "size", "n_domains"]
    assert tw["size"].sum() == len(kept) and len(tw) == 4
    assert all(isinstance(w, list) and w for w in tw.bertopic_words)
    # each pair's topic word is its topic's eq3 word
    m = dict(zip(tw.topic_id, tw.eq3_word))
    assert (kept.topic_word == kept.topic_id.map(m)).all()
    assert set(res.timings) >= {"filter", "embed", "topics", "ctfidf", "domains", "total"}
    # the filter removed mostly mismatched pairs
    rep = filter_report(p.kept.to_numpy(), world["mismatched"])
    assert rep["precision"] > 0.8
    # metrics run and are sane on this easy world
    ids, conc = kept.topic_id.to_numpy(), world["concepts"][p.kept.to_numpy()]
    assert 0.0 <= topic_nmi(ids, conc) <= 1.0
    assert 0.0 <= concept_coverage(ids, conc) <= 1.0
    assert 0.0 <= topic_word_accuracy(ids, conc, m, SYNONYMS) <= 1.0
    sty = world["styles"][p.kept.to_numpy()]
    pur, chance = domain_style_purity(ids, kept.domain_id, sty), domain_purity_chance(ids, kept.domain_id, sty)
    assert pur > chance  # image features carry a style direction
    out = res.save(tmp_path / "out")
    assert (out / "pairs.csv").exists() and (out / "topic_words.csv").exists()
    assert elapsed < 60


def test_run_chc_hdbscan_drop_and_reassign(world, encoder, tmp_path):
    base = fast_cfg(clusterer="hdbscan", min_cluster_size=8, k=None)
    res = run_chc(world["captions"], world["img"], world["txt"], base, tmp_path, encoder=encoder)
    p = res.pairs
    assert (p.loc[p.drop_reason == "outlier", "topic_id"] == -1).all()
    assert (p.loc[p.topic_id == -1, "domain_id"] == -1).all()
    n_out = int((p.drop_reason == "outlier").sum())
    assert n_out > 0  # otherwise the reassignment below tests nothing
    for rule in ("reassign", "reassign_bertopic"):
        cfg = dataclasses.replace(base, topics=dataclasses.replace(base.topics, outliers=rule))
        res2 = run_chc(world["captions"], world["img"], world["txt"], cfg, tmp_path, encoder=encoder)
        kept2 = res2.pairs[res2.pairs.kept]
        assert (kept2.topic_id >= 0).all() and (kept2.domain_id >= 0).all(), rule
        assert res2.topic_words["size"].sum() == len(kept2)


def test_run_chc_bad_input(world, encoder, tmp_path):
    caps = list(world["captions"])
    caps[3], caps[7] = "", None
    with pytest.raises(ValueError, match=r"index 3 \(key 'k3'\)"):
        run_chc(caps, world["img"], world["txt"], fast_cfg(), tmp_path,
                keys=[f"k{i}" for i in range(len(caps))], encoder=encoder)
    cfg = dataclasses.replace(fast_cfg(), bad_captions="drop")
    res = run_chc(caps, world["img"], world["txt"], cfg, tmp_path, encoder=encoder)
    assert list(res.pairs.loc[[3, 7], "drop_reason"]) == ["bad_caption", "bad_caption"]
    assert (res.pairs.loc[[3, 7], "topic_id"] == -1).all()
    with pytest.raises(ValueError, match="empty caption list"):
        run_chc([], world["img"][:0], world["txt"][:0], fast_cfg(), tmp_path, encoder=encoder)
    with pytest.raises(ValueError, match="needs at least 20"):
        run_chc(world["captions"][:15], world["img"][:15], world["txt"][:15],
                fast_cfg(clusterer="hdbscan", min_cluster_size=10), tmp_path, encoder=encoder)
    with pytest.raises(ValueError, match="shape"):
        run_chc(world["captions"], world["img"][:-1], world["txt"], fast_cfg(), tmp_path, encoder=encoder)
    with pytest.raises(ValueError, match="caption_features are required"):
        run_chc(world["captions"], world["img"], None, fast_cfg(), tmp_path, encoder=encoder)


def test_config_from_dict_and_swappable_submodels():
    cfg = CHCConfig.from_dict({"filter": {"rule": "absolute", "threshold": 0.2},
                               "topics": {"reducer": "pca", "clusterer": "kmeans", "k": 3,
                                          "vocab": {"min_df": 2}},
                               "domains": {"n_domains": 2}})
    assert cfg.topics.vocab.min_df == 2 and cfg.filter.rule == "absolute" and cfg.domains.n_domains == 2
    with pytest.raises(ValueError, match="chc: unknown key 'bogus'"):
        CHCConfig.from_dict({"bogus": 1})
    assert type(build_reducer(TopicConfig(reducer="pca"))).__name__ == "PCA"
    assert type(build_reducer(TopicConfig(reducer="umap"))).__name__ == "UMAP"
    assert type(build_clusterer(TopicConfig(clusterer="kmeans", k=3))).__name__ == "KMeans"
    assert type(build_clusterer(TopicConfig())).__name__ == "HDBSCAN"
    with pytest.raises(ValueError):
        build_reducer(TopicConfig(reducer="tsne"))


def test_cuml_backend_errors_clearly_when_missing():
    try:
        import cuml  # noqa: F401
        pytest.skip("cuml installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="RAPIDS cuML"):
        build_reducer(TopicConfig(backend="cuml"))
    with pytest.raises(ImportError, match="RAPIDS cuML"):
        build_clusterer(TopicConfig(backend="cuml"))


@pytest.mark.slow  # numba JIT-compiles UMAP on first use: ~35 s on 2 cores
def test_umap_fit_sample_on_memmap(world, encoder, tmp_path):
    """Scale path: fit UMAP on a sample, transform the rest in chunks from a memory-mapped array."""
    from gramlib.chc import SampledReducer

    emb = embed_captions(world["captions"], encoder, tmp_path, show_progress_bar=False)
    assert isinstance(emb, np.memmap)
    cfg = TopicConfig(n_components=3, n_neighbors=10, n_epochs=30, low_memory=True, fit_sample=80, transform_chunk=50)
    red = SampledReducer(build_reducer(cfg), cfg.fit_sample, cfg.transform_chunk, 0).fit_transform(emb)
    assert red.shape == (len(emb), 3) and np.isfinite(red).all()


@pytest.mark.slow
def test_run_chc_paper_defaults_umap_hdbscan(world, encoder, tmp_path):
    """The paper's path (UMAP + HDBSCAN, BERTopic defaults) recovers the concepts of the easy world."""
    cfg = CHCConfig(topics=TopicConfig(min_cluster_size=10), domains=DomainConfig(n_domains=4),
                    show_progress_bar=False)
    res = run_chc(world["captions"], world["img"], world["txt"], cfg, tmp_path, encoder=encoder)
    kept = res.pairs[res.pairs.kept]
    assert topic_nmi(kept.topic_id, world["concepts"][res.pairs.kept.to_numpy()]) > 0.3
