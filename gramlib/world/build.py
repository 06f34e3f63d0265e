"""Generate the mini world's three corpora from the spec, deterministically from a seed.

* ``web/``: image-caption pairs on which the tiny CLIP is pre-trained (CLIP's own web data).
* ``cc3m/``: unlabeled pairs as webdataset tar shards in img2dataset's layout, the analogue of the
  CC3M subset GRAM clusters; the ground truth sits in ``cc3m_truth.parquet`` beside (not inside)
  the shards, read only by evaluation code.
* ``coop/<dataset>/``: downstream datasets in CoOp's layout with ``split_zhou_<dataset>.json``.

Every sample draws from its own generator seeded by (world seed, corpus, index), so the output
does not depend on the number of worker processes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing as mp
import shutil
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gramlib.config import REPO, Profile, WorldConfig
from gramlib.io import atomic_path, file_hash, write_json, write_npy
from gramlib.world.captions import make_caption
from gramlib.world.render import STYLES, RenderOptions, render
from gramlib.world.spec import WorldSpec, load_spec

log = logging.getLogger(__name__)

WEB, CC3M, COOP = 1, 2, 3
SPLITS = ("train", "val", "test")


def world_spec(cfg: WorldConfig) -> WorldSpec:
    path = Path(cfg.spec)
    return load_spec(path if path.is_absolute() else REPO / path).subset(cfg.concepts_per_family)


# ----------------------------------------------------------------------------------------------
# per-sample generators (pure functions of their seeds)


def _web_sample(spec: WorldSpec, cfg: WorldConfig, i: int, corpus: int = WEB) -> dict:
    rng = np.random.default_rng([cfg.seed, corpus, i])
    names = list(spec.concepts)
    concept = names[int(rng.integers(len(names)))]
    style = STYLES[int(rng.integers(len(STYLES)))]
    opts = RenderOptions(clutter_p=cfg.web_clutter_p)
    img, attrs = render(concept, style, rng, cfg.image_size, opts, distractors=tuple(names))
    caption_concept = concept
    mismatched = corpus == CC3M and rng.uniform() < spec.captions.mismatch_fraction
    if mismatched:
        others = [n for n in names if n != concept]
        caption_concept = others[int(rng.integers(len(others)))]
        style_for_caption = STYLES[int(rng.integers(len(STYLES)))]
    else:
        style_for_caption = style
    caption = make_caption(spec.concepts[caption_concept], style_for_caption, attrs, spec, rng)
    return {"image": img, "caption": caption, "concept": concept, "style": style,
            "mismatched": bool(mismatched), "caption_concept": caption_concept}


def _render_chunk(args: tuple) -> list[dict]:
    spec, cfg, corpus, indices = args
    return [_web_sample(spec, cfg, i, corpus) for i in indices]


def _coop_chunk(args: tuple) -> list[tuple[str, str, int, str]]:
    """Render and write one chunk of downstream images; returns (split, relpath, label, style)."""
    spec, cfg, ds_name, jobs, image_dir = args
    ds = spec.datasets[ds_name]
    names = sorted(ds.concepts)
    styles, weights = zip(*ds.styles.items())
    p = np.asarray(weights) / np.sum(weights)
    out = []
    for concept, label, split, j in jobs:
        rng = np.random.default_rng([cfg.seed, COOP, zlib.crc32(ds_name.encode()), label, SPLITS.index(split), j])
        style = styles[int(rng.choice(len(styles), p=p))]
        distractors = tuple(n for n in spec.concepts if n != concept)
        img, _ = render(concept, style, rng, cfg.image_size, ds.render, distractors=distractors)
        rel = f"{concept}/{split}_{j:04d}.jpg"
        path = Path(image_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=95)
        out.append((split, rel, label, style))
    return out


def _map(fn, tasks: list, workers: int) -> list:
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(fn, tasks, chunksize=1)


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# corpora


def write_web_corpus(spec: WorldSpec, cfg: WorldConfig, out_dir: Path) -> dict:
    """Images as one uint8 array (N, H, W, 3) + captions table: fast to stream for pre-training."""
    samples = [s for chunk in _map(_render_chunk, [(spec, cfg, WEB, r) for r in _chunks(cfg.n_web, 1000)], cfg.workers) for s in chunk]
    images = np.stack([s.pop("image") for s in samples])
    write_npy(out_dir / "images.npy", images)
    table = pd.DataFrame(samples)[["caption", "concept", "style"]]
    with atomic_path(out_dir / "captions.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return {"n": len(table), "image_shape": list(images.shape[1:])}


def write_cc3m_corpus(spec: WorldSpec, cfg: WorldConfig, shard_dir: Path, truth_path: Path) -> dict:
    """Unlabeled pairs as img2dataset-style webdataset shards; ground truth kept outside them."""
    from gramlib.data.cc3m import write_shards

    samples = [s for chunk in _map(_render_chunk, [(spec, cfg, CC3M, r) for r in _chunks(cfg.n_cc3m, 1000)], cfg.workers) for s in chunk]
    truth, records = [], []
    for i, s in enumerate(samples):
        shard, idx = divmod(i, cfg.shard_size)
        key = f"{shard:05d}{idx:04d}"
        buf = io.BytesIO()
        Image.fromarray(s["image"]).save(buf, format="JPEG", quality=95)
        h, w = s["image"].shape[:2]
        records.append({"key": key, "jpg": buf.getvalue(), "caption": s["caption"],
                        "json": {"url": f"miniworld://cc3m/{key}", "width": w, "height": h,
                                 "original_width": w, "original_height": h}})
        truth.append({"key": key, "concept": s["concept"], "style": s["style"],
                      "mismatched": s["mismatched"], "caption_concept": s["caption_concept"]})
    shards = write_shards(records, shard_dir, shard_size=cfg.shard_size)
    with atomic_path(truth_path) as tmp:
        pd.DataFrame(truth).to_parquet(tmp, index=False)
    return {"n": len(samples), "n_shards": len(shards), "mismatched": int(sum(t["mismatched"] for t in truth))}


def write_coop_datasets(spec: WorldSpec, cfg: WorldConfig, coop_dir: Path) -> dict:
    """Every downstream dataset in CoOp's layout; labels follow the sorted class names (as CoOp)."""
    from gramlib.data.coop import Datum, write_split

    summary = {}
    for name, ds in spec.datasets.items():
        dataset_dir = coop_dir / name
        image_dir = dataset_dir / "images"
        names = sorted(ds.concepts)
        jobs = []
        for label, concept in enumerate(names):
            for split in SPLITS:
                n = ds.split.get(split, 0)
                n = max(1, int(round(n * cfg.split_scale))) if n else 0
                jobs.extend((concept, label, split, j) for j in range(n))
        chunk = max(1, len(jobs) // max(1, 4 * cfg.workers) + 1)
        tasks = [(spec, cfg, name, jobs[s:s + chunk], str(image_dir)) for s in range(0, len(jobs), chunk)]
        rows = [r for part in _map(_coop_chunk, tasks, cfg.workers) for r in part]
        split_data = {s: [] for s in SPLITS}
        for split, rel, label, style in rows:
            split_data[split].append(Datum(image_dir / rel, label, spec.concepts[names[label]].classname, style))
        write_split(dataset_dir / f"split_zhou_{name}.json", split_data["train"], split_data["val"], split_data["test"])
        styles = pd.DataFrame([(r[1], r[3]) for r in rows], columns=["impath", "style"])
        with atomic_path(dataset_dir / "styles.csv") as tmp:
            styles.to_csv(tmp, index=False)
        summary[name] = {"role": ds.role, "n_classes": len(names), "template": ds.template,
                         **{s: len(v) for s, v in split_data.items()}}
    return summary


def tree_digest(path: Path) -> str:
    """sha256 over every file under ``path`` (relative name and bytes, sorted): the world manifest
    carries one per corpus, so a stage that depends on ``world.json`` sees any change of the data."""
    h = hashlib.sha256()
    for f in sorted(q for q in Path(path).rglob("*") if q.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def build_world(profile: Profile) -> dict:
    """The profile's data and its manifest ``<data root>/world.json``, the world stage's output.

    A profile with a ``world`` block gets its three corpora generated; one without (the paper
    profile and its stand-in) brings its own data, which :func:`describe_data` checks instead.
    """
    cfg = profile.world
    if cfg is None:
        return describe_data(profile)
    spec = world_spec(cfg)
    root = profile.root
    # the stage owns its generated corpora: a rerun replaces them whole (DVC tracks world.json, not them,
    # so it no longer deletes them before the run); nothing else under the data root is touched
    for generated in (root / "web", root / profile.cc3m_dir, root / profile.coop_dir):
        if generated.is_dir():
            shutil.rmtree(generated)
    (root / "cc3m_truth.parquet").unlink(missing_ok=True)
    timings = {}
    t0 = time.perf_counter()
    web = write_web_corpus(spec, cfg, root / "web")
    timings["web_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cc3m = write_cc3m_corpus(spec, cfg, root / profile.cc3m_dir, root / "cc3m_truth.parquet")
    timings["cc3m_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    coop = write_coop_datasets(spec, cfg, root / profile.coop_dir)
    timings["coop_s"] = time.perf_counter() - t0
    manifest = {
        "profile": profile.name,
        "generated": True,
        "world": asdict(cfg),
        "n_concepts": len(spec.concepts),
        "families": spec.families,
        "styles": list(STYLES),
        "synonyms": {c.name: list(c.synonyms) for c in spec.concepts.values()},
        "web": web,
        "cc3m": cc3m,
        "datasets": coop,
        "digest": {"web": tree_digest(root / "web"), "cc3m": tree_digest(root / profile.cc3m_dir),
                   "cc3m_truth": file_hash(root / "cc3m_truth.parquet", length=64),
                   "coop": tree_digest(root / profile.coop_dir)},
    }
    write_json(root / "world.json", manifest)  # no timings: the world is a deterministic DVC output
    return {**manifest, "timings": {k: round(v, 2) for k, v in timings.items()}}


def describe_data(profile: Profile) -> dict:
    """Check a profile's own data (CoOp's ``DATA/`` layout, img2dataset CC3M shards) and describe it.

    Every dataset and variant of the profile is loaded, so a folder in the wrong layout fails here,
    within seconds and naming the expected path, not hours later in a suite unit. The manifest holds
    what notebook 00 shows (classes, split sizes, CoOp's template per dataset) and the CC3M shard list
    with sizes; the data itself is tracked by ``dvc add`` (README), so no content digest is taken here.
    """
    from gramlib.data.templates import COOP_TEMPLATES, template_for
    from gramlib.data.coop import load_dataset

    root = profile.root
    if not root.is_dir():
        raise FileNotFoundError(f"profile {profile.name!r}: data root {root} not found (profiles.{profile.name}."
                                f"data_root; put CoOp's DATA/ folder at {root / profile.coop_dir} and the CC3M "
                                f"shards at {root / profile.cc3m_dir}, see the README's paper-profile section)")
    datasets = {}
    for name in (*profile.datasets, *profile.variants):
        ds = load_dataset(root / profile.coop_dir, name)
        role = ("source" if name == profile.source else "variant" if name in profile.variants else "target")
        datasets[name] = {"role": role, "n_classes": ds.num_classes, "template": template_for(COOP_TEMPLATES, name),
                          "train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
    cc3m_dir = root / profile.cc3m_dir
    shards = sorted(cc3m_dir.glob("*.tar")) if cc3m_dir.is_dir() else []
    if not shards:
        raise FileNotFoundError(f"profile {profile.name!r}: no CC3M shards (*.tar, img2dataset's webdataset output) "
                                f"in {cc3m_dir}")
    manifest = {"profile": profile.name, "generated": False, "datasets": datasets,
                "cc3m": {"n_shards": len(shards),
                         "shards": {f.name: f.stat().st_size for f in shards}}}
    write_json(root / "world.json", manifest)
    return manifest
