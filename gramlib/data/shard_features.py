"""Frozen image features of webdataset shards, one feature file per shard: resumable, and on Ray Data.

CC3M is ~2.5 M pairs in ~300 shards; its ViT-B/16 features are a GPU job of hours. Written one shard at a
time (``<stem>.npy``: float32 (n, D), then ``<stem>.json``: keys, skipped samples, the shard's size and
mtime, written last, so its presence marks a finished shard), a killed job resumes with the shards it has
not finished and never computes a shard twice; :func:`load_shard_features` joins the files into one
``.npy`` that callers memory-map.

Two paths compute the same features:

* ``backend: local`` (the default; the mini and smoke profiles, where a cluster does not pay): shards one
  after another in this process, batch by batch;
* ``backend: ray``: a ``ray.data`` pipeline: shards are read and decoded by CPU tasks (one shard a task),
  the eval transform runs there too, and the backbone runs in a pool of actors (``compute.unit`` resources:
  a GPU or a fraction per actor) in batches of ``batch_size``, under the profile's precision (bf16 on CUDA);
  the driver writes each shard's file when all its rows have arrived.

Corrupt samples (undecodable image, missing or bad caption) are skipped and listed with shard and key, as
:func:`gramlib.data.cc3m.iter_shards` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gramlib.io import read_json, write_json, write_npy

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    """What one call did: the shards it computed (``computed``) and those it found finished (``reused``)."""

    out_dir: Path
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (shard, key, reason) of computed shards


def _identity(shard: Path) -> dict[str, Any]:
    st = shard.stat()
    return {"shard": shard.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def shard_done(out_dir: Path, shard: Path) -> bool:
    """True when ``shard``'s feature file is complete and was computed from the shard as it is now."""
    meta = out_dir / f"{shard.stem}.json"
    if not (meta.exists() and (out_dir / f"{shard.stem}.npy").exists()):
        return False
    try:
        return read_json(meta).get("identity") == _identity(shard)
    except ValueError:
        return False


def _write_shard(out_dir: Path, shard: Path, keys: list[str], feats: np.ndarray, skipped: list[tuple[str, str, str]],
                 dim: int) -> None:
    write_npy(out_dir / f"{shard.stem}.npy", feats.astype(np.float32) if len(feats) else np.zeros((0, dim), np.float32))
    write_json(out_dir / f"{shard.stem}.json", {"identity": _identity(shard), "keys": keys,
                                                "skipped": [list(s) for s in skipped]})


def _decode_samples(shard: Path, transform: Any) -> tuple[list[str], list[Any], list[tuple[str, str, str]]]:
    """(keys, transformed pixels, skipped) of one shard."""
    from gramlib.data.cc3m import ReadStats, iter_shards

    stats = ReadStats()
    keys, pixels = [], []
    for key, image, _caption, _meta in iter_shards([shard], decode=True, on_empty="skip", on_corrupt="skip", stats=stats):
        keys.append(key)
        pixels.append(transform(image))
    return keys, pixels, [tuple(s) for s in stats.skipped]


def _encode(backbone: Any, pixels: Any) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), backbone.autocast():
        z = backbone.model.encode_image(pixels.to(backbone.device, non_blocking=True))
    return F.normalize(z.float(), dim=-1).cpu().numpy()


def extract_shard_features(profile: Any, shards: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                           compute: Any = None, batch_size: int = 256, stop_after: int | None = None) -> ExtractResult:
    """Image features of every shard not finished in ``out_dir`` (see the module docstring).

    ``compute``: a :class:`gramlib.compute.ComputeConfig` (default: local). ``stop_after``: stop after
    writing that many shards (tests simulate a killed job with it).
    """
    from gramlib.compute import LOCAL

    compute = compute or LOCAL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(s).resolve() for s in shards]
    res = ExtractResult(out)
    todo = []
    for p in paths:
        (res.reused if shard_done(out, p) else todo).append(p)
    res.reused = [p.name for p in res.reused]
    if not todo:
        return res
    if compute.backend == "ray":
        _extract_ray(profile, todo, out, compute, batch_size, res, stop_after)
    else:
        _extract_local(profile, todo, out, batch_size, res, stop_after)
    return res


def _extract_local(profile: Any, todo: list[Path], out: Path, batch_size: int, res: ExtractResult,
                   stop_after: int | None) -> None:
    import torch

    from gramlib.clip.features import eval_transform
    from gramlib.clip.pretrain import load_profile_backbone

    bb = load_profile_backbone(profile)
    tf = eval_transform(bb)
    for shard in todo:
        keys, pixels, skipped = _decode_samples(shard, tf)
        feats = [_encode(bb, torch.stack(pixels[s:s + batch_size])) for s in range(0, len(pixels), batch_size)]
        _write_shard(out, shard, keys, np.concatenate(feats) if feats else np.zeros((0, bb.embed_dim)), skipped, bb.embed_dim)
        res.computed.append(shard.name)
        res.skipped.extend(skipped)
        if stop_after is not None and len(res.computed) >= stop_after:
            return


# ------------------------------------------------------------------------------------------------
# Ray Data


def _ray_decode(row: dict[str, Any], image_size: int, mean: tuple, std: tuple) -> list[dict[str, Any]]:
    """One shard -> one row per sample (pixels as a float32 array) and a last row with the shard's count."""
    from gramlib.data.transforms import make_transform

    shard = Path(row["shard"])
    keys, pixels, skipped = _decode_samples(shard, make_transform(image_size, mean, std, train=False))
    rows = [{"shard": str(shard), "index": i, "key": k, "pixels": p.numpy(), "n": len(keys), "skipped": ""}
            for i, (k, p) in enumerate(zip(keys, pixels))]
    import json

    # the shard's marker row: how many samples to wait for, and what was skipped
    rows.append({"shard": str(shard), "index": -1, "key": "", "pixels": np.zeros((3, image_size, image_size), np.float32),
                 "n": len(keys), "skipped": json.dumps([list(s) for s in skipped])})
    return rows


class _RayEncoder:
    """An actor of the pool: the profile's backbone, loaded once, encoding batches of pixels."""

    def __init__(self, profile: Any):
        from gramlib.clip.pretrain import load_profile_backbone

        self.backbone = load_profile_backbone(profile)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        real = batch["index"] >= 0
        feats = np.zeros((len(batch["index"]), self.backbone.embed_dim), np.float32)
        if real.any():
            feats[real] = _encode(self.backbone, torch.from_numpy(np.stack(batch["pixels"][real])))
        return {k: v for k, v in batch.items() if k != "pixels"} | {"feature": feats}


def actor_pool(resources: dict[str, float], unit: Any) -> tuple[int, dict[str, Any], str]:
    """(size, extra ``map`` options, device) of a Ray Data pool of model actors of ``unit`` resources
    (``compute.unit``) on a cluster of ``resources``. With GPUs, one actor per GPU share and the CPUs left to
    decoding; on CPUs only, one CPU's worth is left to Ray Data's own tasks: a pool holding every CPU starves
    them and the pipeline deadlocks."""
    if unit.gpus:
        return max(1, int(resources.get("GPU", 0) / unit.gpus)), {"num_gpus": unit.gpus}, "cuda"
    return max(1, int(resources.get("CPU", 1) / unit.cpus) - 1), {}, "cpu"


def _extract_ray(profile: Any, todo: list[Path], out: Path, compute: Any, batch_size: int, res: ExtractResult,
                 stop_after: int | None) -> None:
    import json

    from gramlib.clip.factory import tiny_config, TINY_ARCHS
    from gramlib.compute import ray_session
    from gramlib.data.transforms import CLIP_MEAN, CLIP_STD

    bb_cfg = profile.backbone
    image_size = (tiny_config(bb_cfg.arch)["vision_cfg"]["image_size"] if bb_cfg.arch in TINY_ARCHS
                  else _pretrained_image_size(profile))
    with ray_session(compute) as ray:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"shard": str(p)} for p in todo])
        ds = ds.repartition(len(todo)).flat_map(_ray_decode, fn_args=(image_size, CLIP_MEAN, CLIP_STD))
        unit = compute.unit
        n_actors, extra, _ = actor_pool(ray.cluster_resources(), unit)
        ds = ds.map_batches(_RayEncoder, fn_constructor_args=(profile,), batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=unit.cpus, **extra)
        pending: dict[str, dict[str, Any]] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["index"])):
                s = str(batch["shard"][i])
                got = pending.setdefault(s, {"rows": {}, "n": None, "skipped": []})
                if int(batch["index"][i]) < 0:
                    got["n"], got["skipped"] = int(batch["n"][i]), [tuple(x) for x in json.loads(str(batch["skipped"][i]))]
                else:
                    got["rows"][int(batch["index"][i])] = (str(batch["key"][i]), batch["feature"][i])
                if got["n"] is not None and len(got["rows"]) == got["n"]:
                    order = sorted(got["rows"])
                    feats = np.stack([got["rows"][j][1] for j in order]) if order else np.zeros((0, batch["feature"].shape[1]))
                    _write_shard(out, Path(s), [got["rows"][j][0] for j in order], feats, got["skipped"],
                                 int(batch["feature"].shape[1]))
                    res.computed.append(Path(s).name)
                    res.skipped.extend(got["skipped"])
                    del pending[s]
                    if stop_after is not None and len(res.computed) >= stop_after:
                        return


def _pretrained_image_size(profile: Any) -> int:
    """The input size from open_clip's model config: the driver needs no weights to size its decoders."""
    import open_clip

    size = open_clip.get_model_config(profile.backbone.arch)["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def load_shard_features(out_dir: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str]]:
    """The features of ``shards`` in shard order as one memory-mapped (N, D) array, and their keys.

    The per-shard files are joined once into ``<out_dir>/joined-<hash>.npy`` (rewritten when a shard's
    file changes) and opened with ``mmap_mode="r"``: a corpus of millions of rows is paged in as used.
    """
    import hashlib

    out = Path(out_dir)
    paths = [Path(s) for s in shards]
    missing = [p.name for p in paths if not shard_done(out, p.resolve())]
    if missing:
        raise FileNotFoundError(f"{out}: no finished feature file for shard(s) {missing[:5]}: run the extraction first")
    metas = [read_json(out / f"{p.stem}.json") for p in paths]
    keys = [k for m in metas for k in m["keys"]]
    tag = hashlib.sha256(repr([m["identity"] for m in metas]).encode()).hexdigest()[:16]
    joined = out / f"joined-{tag}.npy"
    if not joined.exists():
        parts = [np.load(out / f"{p.stem}.npy", mmap_mode="r") for p in paths]
        dim = parts[0].shape[1] if parts else 0
        from gramlib.io import atomic_path

        with atomic_path(joined) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), dim))
            at = 0
            for part in parts:
                arr[at:at + len(part)] = part
                at += len(part)
            arr.flush()
            del arr
    return np.load(joined, mmap_mode="r"), keys


__all__ = ["ExtractResult", "actor_pool", "extract_shard_features", "load_shard_features", "shard_done"]
