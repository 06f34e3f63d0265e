"""The paper profile's GPU path on stand-ins: backbone stage, feature extraction, a CoOp unit on an
ImageNet-layout fixture (1,000 class names), one VPT+GRAM meta-step, on the profile's device/precision.

What it checks on a lent GPU (the `device` tool; CI never has one): that ``backbone.device: auto``
puts every model on CUDA and ``precision: auto`` runs bf16 autocast there, that nothing crashes on
device placement, and how fast and how large each piece is. Weights are random ViT-B/16 weights
written where a real user's file would be (``backbone.checkpoint``), with ``pretrained: openai`` so
QuickGELU is used exactly as for OpenAI's CLIP. Speed is reported against a baseline in the same
run: fp32 for the feature extractor (bf16's ratio), and the same meta-step at fp32.

Writes ``benchmarks/results/gpu_paper_profile.json`` (or ``--out``): device, dtype, time and peak
GPU memory of each piece. ``--small`` shrinks everything for a CPU dry run.

    python benchmarks/gpu_paper_profile.py [--small] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gramlib.config import REPO, get_profile
from gramlib.io import write_json

OUT = REPO / "benchmarks" / "results" / "gpu_paper_profile.json"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def standin_weights(path: Path) -> Path:
    """Random ViT-B/16 weights in fp16 safetensors: the shape and size of OpenAI's file."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def imagenet_fixture(root: Path, n_classes: int, per_class: int) -> Path:
    """CoOp's ImageNet layout: images/{train,val}/<wnid>/*.JPEG + classnames.txt (wnid name per line)."""
    rng = np.random.default_rng(0)
    lines = []
    for c in range(n_classes):
        wnid = f"n{c:08d}"
        lines.append(f"{wnid} class number {c}")
        for split in ("train", "val"):
            d = root / "imagenet" / "images" / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class if split == "train" else 1):
                px = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(px).save(d / f"{wnid}_{j}.JPEG", quality=90)
    (root / "imagenet" / "classnames.txt").write_text("\n".join(lines) + "\n")
    return root


def feature_extraction(bb, n_images: int, batch: int) -> dict:
    """Model-only images/s (tensors already on the device) in the backbone's precision vs fp32."""
    x = torch.randn(batch, 3, bb.image_size, bb.image_size, device=bb.device)
    out = {}
    for label, b in (("profile", bb), ("fp32", dataclasses.replace(bb, precision="fp32"))):
        with torch.no_grad(), b.autocast():
            b.model.encode_image(x)  # warm-up
            _sync()
            _peak_reset()
            t0 = time.perf_counter()
            n = 0
            while n < n_images:
                z = b.model.encode_image(x)
                n += batch
            _sync()
        dt = time.perf_counter() - t0
        out[label] = {"images_per_s": round(n / dt, 1), "dtype": str(z.dtype), "peak_gb": _peak_gb(), "batch": batch}
    out["speedup_profile_vs_fp32"] = round(out["profile"]["images_per_s"] / out["fp32"]["images_per_s"], 2)
    return out


def encode_end_to_end(bb, n_images: int) -> dict:
    """encode_images on PIL images (CPU decode + transform + GPU model): what the stages see."""
    from gramlib.clip.features import encode_images, eval_transform

    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8)) for _ in range(n_images)]
    _sync()
    t0 = time.perf_counter()
    feats = encode_images(bb, imgs, eval_transform(bb), None, identity=["bench", n_images])
    _sync()
    dt = time.perf_counter() - t0
    return {"images_per_s": round(n_images / dt, 1), "n": n_images, "out_device": str(feats.device),
            "out_dtype": str(feats.dtype)}


def coop_unit(prof, bb, data_root: Path, shots: int, epochs: int) -> dict:
    from gramlib.clip.zeroshot import COOP_TEMPLATES
    from gramlib.experiments.protocols import Env, run_unit, unit_data

    env = Env(dataclasses.replace(prof, data_root=str(data_root), coop_dir="."), bb, dict(COOP_TEMPLATES),
              data_root / "features", data_root / "fewshot", "bench")
    base, targets = unit_data(env, "base2new", "imagenet", shots, 1)
    _sync()
    _peak_reset()
    t0 = time.perf_counter()
    rows = run_unit(env, "base2new", "coop", 1, shots, base, targets, train={"epochs": epochs, "batch_size": 32})
    _sync()
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_gb": _peak_gb(), "n_base_classes": len(base.classnames),
            "n_train": len(base.train), "epochs": epochs,
            "accuracy": {f"{r['split']}@{r['epoch']}": round(r["accuracy"], 2) for r in rows}}


def vpt_gram_meta_step(prof, bb, precision: str, steps: int, small: bool = False) -> dict:
    """Algorithm 1's outer step for VPT+GRAM on pixels (second order through the image tower), with the
    paper profile's meta-batch and task shape (``small``: 1 task of 2 ways, 1 shot, 1 query, for a CPU)."""
    from gramlib.gram.meta import init_meta_state, meta_step
    from gramlib.gram.regulator import init_regulator
    from gramlib.gram.run_config import meta_train_config
    from gramlib.gram.task_loss import TaskLoss, meta_batch
    from gramlib.gram.tasks import pool_from_labels, sample_tasks
    from gramlib.learners import build_learner

    cfg = meta_train_config("paper", "vpt_gram")
    if small:
        cfg = dataclasses.replace(cfg, tasks=dataclasses.replace(cfg.tasks, ways=2, shots=1, query=1),
                                  meta=dataclasses.replace(cfg.meta, meta_batch=1))
    b = dataclasses.replace(bb, precision=precision)
    torch.manual_seed(0)
    learner = build_learner(cfg.learner, b.model, b.tokenizer, **cfg.learner_options())
    names = [f"topic {i}" for i in range(20)]
    per = 2 * (cfg.tasks.shots + cfg.tasks.query)
    labels = np.repeat(np.arange(len(names)), per)
    domains = np.tile(np.arange(2), len(labels) // 2 + 1)[: len(labels)]  # two domains per class (domain shift)
    pool = pool_from_labels(labels, names, cfg.tasks, domains)
    bank = torch.randn(len(labels), 3, b.image_size, b.image_size)  # pixels, on the CPU (per-task transfer)
    loss_fn = TaskLoss(learner, names, image_features=False)
    theta0 = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    state = init_meta_state(theta0, init_regulator(theta0, cfg.meta.regulator), cfg.meta)
    rng = np.random.default_rng(0)
    times = []
    _peak_reset()
    for _ in range(steps + 1):  # the first is a warm-up
        batch = meta_batch(sample_tasks(pool, rng, cfg.meta.meta_batch), bank, cfg.meta.vectorize, learner.device)
        _sync()
        t0 = time.perf_counter()
        with b.autocast():
            state, metrics = meta_step(state, batch, loss_fn, cfg.meta)
        _sync()
        times.append(time.perf_counter() - t0)
    theta_dev = {str(v.device) for v in state.theta.values()}
    return {"precision": precision, "seconds_per_step": round(float(np.mean(times[1:])), 3), "peak_gb": _peak_gb(),
            "meta_batch": cfg.meta.meta_batch, "images_per_task": cfg.tasks.ways * (cfg.tasks.shots + cfg.tasks.query),
            "first_order": cfg.meta.first_order, "theta_device": sorted(theta_dev),
            "loss_finite": bool(np.isfinite(float(metrics.get("loss_query", metrics.get("loss", 0.0)))))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes: a CPU dry run of the script")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    n_classes, per_class, n_feat, batch, meta_steps = (20, 2, 16, 8, 1) if a.small else (1000, 2, 8192, 512, 3)
    result: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "host": platform.node(), "small": a.small}
    from gramlib.clip.factory import uses_quick_gelu
    from gramlib.clip.pretrain import load_profile_backbone, pretrain_or_describe

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = standin_weights(tmp / "ViT-B-16-openai-standin.safetensors")
        paper = get_profile("paper")
        prof = dataclasses.replace(paper, data_root=str(tmp / "data"), artifacts_root=str(tmp / "artifacts"),
                                   backbone=dataclasses.replace(paper.backbone, checkpoint=str(weights)))
        t0 = time.perf_counter()
        stage = pretrain_or_describe(prof)  # the backbone stage: find the weights, hash them, record them
        result["backbone_stage"] = {"seconds": round(time.perf_counter() - t0, 2), "identity": stage["identity"],
                                    "quick_gelu": stage["quick_gelu"]}
        t0 = time.perf_counter()
        bb = load_profile_backbone(prof)
        from open_clip.transformer import QuickGELU
        result["backbone"] = {"seconds_to_load": round(time.perf_counter() - t0, 2), "device": bb.device,
                              "precision": bb.precision, "param_device": str(next(bb.model.parameters()).device),
                              "quick_gelu": uses_quick_gelu(prof.backbone)
                              and any(isinstance(m, QuickGELU) for m in bb.model.modules())}
        print(json.dumps(result), flush=True)

        def piece(name, fn):  # one failing piece must not lose the others' measurements
            try:
                result[name] = fn()
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                import traceback
                result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(name, json.dumps(result[name]), flush=True)
            write_json(a.out, result)

        piece("feature_extraction", lambda: feature_extraction(bb, n_feat, batch))
        piece("encode_images_end_to_end", lambda: encode_end_to_end(bb, 64 if a.small else 2048))
        imagenet_fixture(tmp / "coop", n_classes, per_class)
        piece("coop_unit_imagenet", lambda: coop_unit(prof, bb, tmp / "coop", shots=per_class, epochs=2))

        def meta() -> dict:
            m = {p: vpt_gram_meta_step(prof, bb, p, meta_steps, a.small) for p in dict.fromkeys((bb.precision, "fp32"))}
            m["speedup_profile_vs_fp32"] = round(m["fp32"]["seconds_per_step"] / m[bb.precision]["seconds_per_step"], 2)
            return m

        piece("vpt_gram_meta_step", meta)
    write_json(a.out, result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
