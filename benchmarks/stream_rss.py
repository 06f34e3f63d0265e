"""Peak RSS of CHC's and meta-training's image paths when the corpus grows 10x (issue 20, defect 10).

Why: CC3M is ~2.5 M readable pairs.  Held decoded (the old ``load_corpus``) they take ~376 GB; one
float32 pixel tensor of every pair (the old image-side meta-training bank) ~1.5 TB at 224 pixels.
The project now keeps the corpus as spans into its shards (``ShardImages``), extracts features batch
by batch, and gathers each meta-training step's pixels from a ``PixelBank`` with a fixed budget.

What runs, in a *fresh subprocess* per (path, size) so each peak RSS (``ru_maxrss``) is its own:

* ``streaming`` (the project): ``load_corpus`` -> ``encode_images`` over the corpus (CHC's image
  features, written to a feature cache) -> ``--steps`` meta-training-like steps, each gathering
  ``--items`` random pairs from a ``PixelBank`` (budget ``--budget-mb``) and running them through
  the image tower;
* ``naive`` (the baseline, the code this replaced): every image decoded into a list, the same
  features, one pixel tensor of every pair, then the same steps indexing it.

Corpora are generated here (JPEGs of ``--px`` pixels, random shapes on noise, written as
img2dataset shards); the model is the mini profile's tiny CLIP with random weights (its weights do
not change memory).  The bar: the streaming path's peak RSS at 10x the pairs is within 10 % of its
peak at 1x.

    python benchmarks/stream_rss.py                         # 1,000 and 10,000 pairs -> benchmarks/results/stream_rss.json
    python benchmarks/stream_rss.py --sizes 500 5000 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _record import git_commit, machine, write_result  # noqa: E402


def make_corpus(out_dir: Path, n: int, px: int, seed: int = 0) -> None:
    """``n`` pairs of ``px``-pixel JPEGs (a coloured disc or square on noise) in 1,000-pair shards."""
    from PIL import Image, ImageDraw

    from gramlib.data.cc3m import ShardSample, write_shards

    rng = np.random.default_rng(seed)

    def samples():
        for i in range(n):
            arr = rng.integers(0, 255, size=(px, px, 3), dtype=np.uint8)
            im = Image.fromarray(arr)
            d = ImageDraw.Draw(im)
            a, b = sorted(rng.integers(0, px, size=2))
            colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
            (d.ellipse if i % 2 else d.rectangle)([a, a, max(b, a + 2), max(b, a + 2)], fill=colour)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            yield ShardSample(None, buf.getvalue(), f"a {'disc' if i % 2 else 'square'} number {i}")

    write_shards(samples(), out_dir, shard_size=1000)


def child(path: str, shard_dir: str, cache_dir: str, steps: int, items: int, budget_mb: float) -> dict:
    import torch

    torch.set_num_threads(1)
    from gramlib.clip.factory import build_backbone
    from gramlib.clip.features import encode_images, eval_transform
    from gramlib.config import BackboneConfig
    from gramlib.data.corpus import corpus_identity, load_corpus
    from gramlib.data.pixel_bank import PixelBank

    bb = build_backbone(BackboneConfig())
    tf = eval_transform(bb)
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    corpus = load_corpus(shard_dir)
    if path == "streaming":
        images = corpus.images
        feats = encode_images(bb, images, tf, cache_dir, identity=corpus_identity(corpus))
        bank = PixelBank(images, tf, int(budget_mb * 2**20))
    else:  # the replaced code: every image decoded and kept, one pixel tensor of every pair
        images = corpus.images[:]  # a list of decoded PIL images
        feats = encode_images(bb, images, tf, cache_dir, identity=corpus_identity(corpus))
        bank = torch.stack([tf(im) for im in images])
    t_read = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t1 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            idx = torch.as_tensor(rng.integers(0, len(corpus), size=items))
            bb.model.encode_image(bank[idx])
    t_steps = time.perf_counter() - t1
    return {"path": path, "n_pairs": len(corpus), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_imports_mb": round(base_mb, 1), "read_and_features_s": round(t_read, 2),
            "steps_s": round(t_steps, 2), "feature_shape": list(feats.shape),
            "bank_held_mb": round((bank.held_bytes if path == "streaming" else bank.numel() * bank.element_size()) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=(1000, 10000), metavar=("N", "N10"))
    ap.add_argument("--px", type=int, default=128, help="side of the generated JPEGs")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--items", type=int, default=100, help="pairs gathered per step (mini's image-side meta-batch: 100)")
    ap.add_argument("--budget-mb", type=float, default=16.0, help="PixelBank budget of the streaming path")
    ap.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per (path, size); the median peak is reported")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/stream_rss.json")
    ap.add_argument("--child", nargs=3, metavar=("PATH", "SHARDS", "CACHE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.steps, a.items, a.budget_mb)))
        return

    commit = git_commit()
    runs = []
    with tempfile.TemporaryDirectory(prefix="stream_rss_") as tmp:
        for n in a.sizes:
            shard_dir = Path(tmp) / f"cc3m_{n}"
            t = time.perf_counter()
            make_corpus(shard_dir, n, a.px)
            print(f"corpus of {n} pairs written in {time.perf_counter() - t:.1f} s", flush=True)
            for rep in range(a.repeats):
                for path in ("streaming", "naive"):
                    cache = Path(tmp) / f"cache_{path}_{n}_{rep}"  # cold: each run extracts its features
                    out = subprocess.run([sys.executable, __file__, "--child", path, str(shard_dir), str(cache),
                                          "--steps", str(a.steps), "--items", str(a.items), "--budget-mb", str(a.budget_mb)],
                                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(runs[-1], flush=True)

    def median(path: str, n: int, f) -> float:
        return round(float(np.median([f(r) for r in runs if r["path"] == path and r["n_pairs"] == n])), 1)

    keys = [(p, n) for p in ("streaming", "naive") for n in a.sizes]
    peak = {k: median(*k, lambda r: r["peak_rss_mb"]) for k in keys}
    grow = {k: median(*k, lambda r: r["peak_rss_mb"] - r["rss_after_imports_mb"]) for k in keys}
    n1, n10 = a.sizes
    s_ratio = peak[("streaming", n10)] / peak[("streaming", n1)]
    v_ratio = peak[("naive", n10)] / peak[("naive", n1)]
    result = {
        "what": "peak RSS of CHC's image path (load_corpus + encode_images) and of image-side meta-training steps "
                "(PixelBank gathers) at N and 10N pairs; naive = the replaced code (decoded list + one pixel tensor), "
                "same run, each in a fresh subprocess",
        "sizes": [n1, n10], "repeats": a.repeats, "statistic": "median over repeats", "image_px": a.px, "steps": a.steps, "items_per_step": a.items, "pixel_budget_mb": a.budget_mb,
        "streaming_peak_rss_mb": {str(n1): peak[("streaming", n1)], str(n10): peak[("streaming", n10)]},
        "naive_peak_rss_mb": {str(n1): peak[("naive", n1)], str(n10): peak[("naive", n10)]},
        # above the process's footprint after imports and model build (torch alone is ~1 GB of it)
        "streaming_growth_mb": {str(n1): grow[("streaming", n1)], str(n10): grow[("streaming", n10)]},
        "naive_growth_mb": {str(n1): grow[("naive", n1)], str(n10): grow[("naive", n10)]},
        "streaming_rss_ratio_10x": round(s_ratio, 3), "naive_rss_ratio_10x": round(v_ratio, 3),
        "flat_within_10pct": bool(s_ratio <= 1.10),
        "naive_over_streaming_at_10x": round(peak[("naive", n10)] / peak[("streaming", n10)], 2),
        "runs": runs,
        "commit": commit,  # at the start of the run
        "machine": machine(),
        "note": "2 shared CPU cores; RSS, not time, is the measured quantity (times are indicative)",
    }
    write_result(a.out, result)


if __name__ == "__main__":
    main()
