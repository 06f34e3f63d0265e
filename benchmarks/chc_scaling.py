"""How CHC's CPU scale path grows with the corpus: time and peak RSS at 20 k / 100 k / 300 k captions.

Why this shape: CC3M has 3.1 M captions and must fit in 24 GB.  The scale path is
``TopicConfig(fit_sample=..., low_memory=True)`` -- UMAP fitted on a sample and applied to the rest
in chunks, HDBSCAN on the 5-D vectors only, embeddings in a memory-mapped .npy -- then eq. 3 and
per-topic k-means.  Each size runs in a *fresh* subprocess so its peak RSS (``ru_maxrss``) is its own.

Captions are generated cheaply with the mini world's caption model (``make_caption`` + the spec; no
images).  Sentence-BERT is the one step whose cost is exactly linear in N (a fixed per-caption forward
pass), and on the shared 2-core machine 300 k captions would take ~40 min, so it is *measured once*
on ``--embed-sample`` unique captions (captions/s) and extrapolated linearly; the clustering path
gets the real MiniLM vectors of a pool of unique captions, each row jittered (N(0, sigma^2), then
re-normalised) so no two rows coincide.  Image features for the domain step are random 512-d rows.

    python benchmarks/chc_scaling.py                     # 20k 100k 300k -> benchmarks/results/chc_scaling.json
    python benchmarks/chc_scaling.py --sizes 20000 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = (20_000, 100_000, 300_000)
TARGET = 3_100_000


def generate_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` web-style captions of the mini world (concept, style, size, colour drawn at random)."""
    from gramlib.world.build import STYLES
    from gramlib.world.captions import make_caption
    from gramlib.world.spec import load_spec

    spec = load_spec(REPO / "data/spec/miniworld.yaml")
    names = list(spec.concepts)
    colours = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "black"]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = spec.concepts[names[int(rng.integers(len(names)))]]
        attrs = {"size": [None, "small", "large"][int(rng.integers(3))], "colour": colours[int(rng.integers(len(colours)))]}
        out.append(make_caption(c, STYLES[int(rng.integers(len(STYLES)))], attrs, spec, rng))
    return out


def _pool_embedder(pool: dict[str, np.ndarray], sigma: float, seed: int):
    """A BERTopic-compatible embedder returning the pool vector of each caption plus jitter."""
    from bertopic.backend import BaseEmbedder

    class PoolEmbedder(BaseEmbedder):
        gram_model_name = f"pool-minilm-jitter{sigma}-seed{seed}"

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)

        def encode(self, docs, **_: object) -> np.ndarray:
            x = np.stack([pool[d] for d in docs]).astype(np.float32)
            x += self.rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        def embed(self, documents, verbose: bool = False) -> np.ndarray:
            return self.encode(list(documents))

    return PoolEmbedder()


def run_one(n: int, pool_path: Path, cache_dir: Path, fit_sample: int, sigma: float) -> dict:
    """One size, in this process: generate, embed (pool + jitter, memmapped), cluster, eq. 3, domains."""
    import torch

    torch.set_num_threads(2)
    from gramlib.chc import CHCConfig, DomainConfig, FilterConfig, TopicConfig, run_chc
    from gramlib.chc.captions import clean_captions
    from gramlib.chc.stage import chc_params, text_config

    t0 = time.perf_counter()
    caps = clean_captions(generate_captions(n), text_config("mini"))
    t_gen = time.perf_counter() - t0
    pool = dict(np.load(pool_path, allow_pickle=True).item())
    enc = _pool_embedder(pool, sigma, seed=n)
    topics = dict(chc_params("mini")["topics"])
    topics.update(fit_sample=fit_sample, low_memory=True)
    cfg = CHCConfig.from_dict({"filter": {"rule": "none"}, "topics": topics, "domains": {"n_domains": 3},
                               "plot_coords": "none", "show_progress_bar": False})
    img = np.random.default_rng(0).normal(size=(n, 512)).astype(np.float32)
    t1, c1 = time.perf_counter(), time.process_time()
    res = run_chc(caps, img, None, cfg, cache_dir / f"n{n}", encoder=enc)
    secs, cpu = time.perf_counter() - t1, time.process_time() - c1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB -> MiB on Linux
    return {"n": n, "seconds": secs, "cpu_seconds": cpu, "load_avg_1m": os.getloadavg()[0], "generate_seconds": t_gen, "peak_rss_mb": rss,
            "n_topics": int(len(res.topic_words)), "timings": {k: round(v, 2) for k, v in res.timings.items()}}


def build_pool(captions: list[str], path: Path) -> tuple[int, float]:
    """MiniLM vectors of the unique captions (the embedding cost measured here: captions/s)."""
    from gramlib.chc import load_sentence_encoder

    uniq = sorted(set(captions))
    enc = load_sentence_encoder()
    t = time.perf_counter()
    vec = enc.encode(uniq, batch_size=128, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    secs = time.perf_counter() - t
    np.save(path, dict(zip(uniq, vec.astype(np.float32))), allow_pickle=True)
    return len(uniq), secs


def fit_power(ns: list[int], ys: list[float]) -> tuple[float, float]:
    """y = a * n^b by least squares in log-log (b is the growth exponent)."""
    b, loga = np.polyfit(np.log(ns), np.log(ys), 1)
    return float(math.exp(loga)), float(b)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--fit-sample", type=int, default=20_000)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--embed-sample", type=int, default=2_000)
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench_chc")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "chc_scaling.json")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per size; a size past it is recorded as not run")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a.cache.mkdir(parents=True, exist_ok=True)
    pool_path = a.cache / "pool.npy"
    if a.one is not None:  # child process: one size, result as JSON on the last stdout line
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_one(a.one, pool_path, a.cache, a.fit_sample, a.sigma)))
        return

    from gramlib.chc.captions import clean_captions
    from gramlib.chc.stage import text_config

    # pool: every distinct cleaned caption of the largest size (the cleaned vocabulary is small)
    all_caps = clean_captions(generate_captions(max(a.sizes)), text_config("mini"))
    n_unique, pool_s = build_pool(all_caps, pool_path)
    # embedding throughput on raw (uncleaned, mostly unique) captions, for the linear extrapolation
    from gramlib.chc import load_sentence_encoder

    raw = sorted(set(generate_captions(a.embed_sample, seed=1)))
    enc = load_sentence_encoder()
    t = time.perf_counter()
    enc.encode(raw, batch_size=128, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    per_caption = (time.perf_counter() - t) / len(raw)
    print(f"pool: {n_unique} unique cleaned captions in {pool_s:.1f}s; MiniLM {1 / per_caption:.0f} captions/s", flush=True)

    runs, skipped = [], []
    for n in sorted(a.sizes):
        cmd = [sys.executable, __file__, "--one", str(n), "--cache", str(a.cache), "--fit-sample", str(a.fit_sample),
               "--sigma", str(a.sigma)]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, check=True)
        except subprocess.TimeoutExpired:
            skipped.append({"n": n, "reason": f"did not finish within {a.timeout}s on this machine"})
            print(f"n={n}: timed out after {a.timeout}s", flush=True)
            break
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"n={n} failed:\n{exc.stderr[-3000:]}") from exc
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["wall_seconds"] = time.perf_counter() - t
        r["embed_seconds_extrapolated"] = n * per_caption
        runs.append(r)
        print(f"n={n}: CHC {r['seconds']:.1f}s (+ embedding {n * per_caption:.0f}s extrapolated), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['n_topics']} topics", flush=True)

    ns = [r["n"] for r in runs]
    result: dict = {
        "n_captions": ns,
        "seconds": [round(r["seconds"], 2) for r in runs],
        "cpu_seconds": [round(r["cpu_seconds"], 2) for r in runs],
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in runs],
        "embed_seconds_per_caption": per_caption,
        "skipped": skipped,
        "details": runs,
        "setup": {"fit_sample": a.fit_sample, "low_memory": True, "jitter_sigma": a.sigma, "pool_unique_captions": n_unique,
                  "cpu_threads": 2, "note": "seconds = CHC after embeddings (UMAP sample fit + chunked transform, HDBSCAN, "
                  "eq.3, k-means domains); Sentence-BERT time is linear and reported separately"},
    }
    if len(runs) >= 2:
        a_t, b_t = fit_power(ns, result["seconds"])
        a_m, b_m = fit_power(ns, result["peak_rss_mb"])
        result.update({
            "growth_exponent_seconds": round(b_t, 3),
            "growth_exponent_rss": round(b_m, 3),
            "extrapolated_seconds_3_1M": round(a_t * TARGET ** b_t, 1),
            "extrapolated_peak_rss_mb_3_1M": round(a_m * TARGET ** b_m, 1),
            "extrapolated_embed_seconds_3_1M": round(TARGET * per_caption, 1),
        })
        print(f"growth: time ~ n^{b_t:.2f}, RSS ~ n^{b_m:.2f}; 3.1M: CHC {result['extrapolated_seconds_3_1M'] / 3600:.2f} h "
              f"+ embedding {TARGET * per_caption / 3600:.2f} h (CPU), peak RSS {result['extrapolated_peak_rss_mb_3_1M'] / 1024:.1f} GB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
