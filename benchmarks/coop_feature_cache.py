"""CoOp epoch time: cached image features vs. recomputing the image tower every step.

Same data (K shots of one dataset, eval transform, no augmentation), same seed, same process, same
training loop (``gramlib.tuning.train.train_prompt``); only the input bank differs:

* ``cached``: frozen image features extracted once (``gramlib.tuning.inputs``);
* ``recompute``: what the CoOp reference code does each step: load and decode the batch's images,
  apply the transform and run the frozen image tower (then the text tower, as in both modes);
* ``recompute_tower``: the same with the decoded, transformed pixels held in memory, so only the
  image tower is recomputed (a lower bound on the reference's cost).

Feature extraction (one pass over the images) is reported separately and not part of the epoch time.
Without augmentation the two computations are the same, so the accuracies must agree.

    python benchmarks/coop_feature_cache.py --profile mini --dataset mini_imagenet

``--arch ViT-B-16`` swaps the profile's tiny CLIP for the paper's architecture, randomly initialised
(the ``openai`` weights cannot be downloaded here; speed does not depend on the weights), on the same
mini images resized to 224 px by its transform. It shows the ratio where the cache was designed to
pay: an image tower that costs far more per image than the text tower costs per class. Its
accuracies are near chance (random weights) but must still agree between the modes.

    python benchmarks/coop_feature_cache.py --profile mini --dataset mini_patterns_blueprint --arch ViT-B-16 --epochs 2 \
        --out benchmarks/results/coop_feature_cache_vitb16_mini_patterns_blueprint.json

(The results named mini_textures, mini_glyphs and mini_polygons were recorded on the world before issue 14's
redesign, whose targets had those names; the ratios depend on class and image counts, not on the renderings.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gramlib.clip.factory import build_backbone  # noqa: E402
from gramlib.config import BackboneConfig, get_profile  # noqa: E402
from gramlib.data.coop import fewshot_split, load_dataset  # noqa: E402
from gramlib.data.transforms import load_image  # noqa: E402
from gramlib.tuning.inputs import TrainData, ViewBank, eval_inputs, train_inputs  # noqa: E402
from gramlib.io import write_json  # noqa: E402
from gramlib.experiments.protocols import load_env, make_learner  # noqa: E402
from gramlib.tuning.train import TrainConfig, evaluate, train_prompt  # noqa: E402


class DiskBank(ViewBank):
    """Pixels loaded, decoded and transformed from disk at every step (the CoOp reference's loop)."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, transform) -> None:
        self.paths, self.transform = paths, transform
        super().__init__(torch.zeros(1, len(labels), 1), labels, is_features=False)

    def batch(self, index: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.transform(load_image(self.paths[i])) for i in index.tolist()])
        return x, self.labels[index]


def run(mode: str, env, train, test_feats, classnames, cfg: TrainConfig, template: str) -> dict:
    torch.manual_seed(cfg.seed)
    learner = make_learner(env, "coop", template)
    t0 = time.perf_counter()
    if mode == "cached":
        data = train_inputs(learner, env.backbone, train, classnames, "none", cache_dir=None)
    elif mode == "recompute_tower":
        data = train_inputs(learner, env.backbone, train, classnames, "none", cache_features=False)
    else:
        from gramlib.clip.features import eval_transform

        labels = torch.tensor([d.label for d in train])
        data = TrainData(DiskBank([Path(d.impath) for d in train], labels, eval_transform(env.backbone)),
                         list(classnames))
    prep = time.perf_counter() - t0
    res = train_prompt(learner, data, cfg)
    epoch_s = [h["train_s"] for h in res.history]
    return {"mode": mode, "prep_s": prep, "epoch_s": epoch_s, "mean_epoch_s": sum(epoch_s) / len(epoch_s),
            "accuracy": 100.0 * evaluate(learner, res.theta, test_feats), "theta": res.theta["ctx"]}


def measure(env, dataset: str, shots: int = 16, seed: int = 1, epochs: int = 3) -> dict:
    """Train CoOp in the three modes on ``dataset`` (K shots of ``seed``); epoch times, accuracies, θ."""
    ds = fewshot_split(load_dataset(env.coop_root, dataset), shots, seed, cache_dir=env.fewshot_cache)
    template = env.templates.get(dataset, "a photo of a {}.")
    probe = make_learner(env, "coop", template)
    test = eval_inputs(probe, env.backbone, ds.test, ds.classnames, cache_dir=env.feature_cache)
    cfg = TrainConfig.for_learner("coop", epochs=epochs, seed=seed)
    runs = {m: run(m, env, ds.train, test, ds.classnames, cfg, template)
            for m in ("cached", "recompute", "recompute_tower")}
    c, r, t = runs["cached"], runs["recompute"], runs["recompute_tower"]
    return {
        "speedup": r["mean_epoch_s"] / c["mean_epoch_s"], "acc_cached": c["accuracy"], "acc_recompute": r["accuracy"],
        "speedup_tower_only": t["mean_epoch_s"] / c["mean_epoch_s"], "acc_recompute_tower": t["accuracy"],
        "epoch_s": {m: x["mean_epoch_s"] for m, x in runs.items()},
        "epoch_s_all": {m: x["epoch_s"] for m, x in runs.items()},
        "prep_s": {m: x["prep_s"] for m, x in runs.items()},
        "max_abs_theta_diff": max(float((x["theta"] - c["theta"]).abs().max()) for x in (r, t)),
        "dataset": dataset, "epochs": epochs, "shots": shots, "seed": seed, "n_train": len(ds.train),
        "n_classes": len(ds.classnames), "n_test": len(ds.test), "batch_size": cfg.batch_size,
        "accuracy_unit": "percent",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--dataset", default="mini_imagenet")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--artifacts-root", default=None, help="override the profile's artifacts root (backbone)")
    ap.add_argument("--arch", default=None,
                    help="an open_clip architecture instead of the profile's (e.g. ViT-B-16), randomly initialised")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "coop_feature_cache.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    prof = get_profile(args.profile)
    if args.artifacts_root:
        prof = dataclasses.replace(prof, artifacts_root=args.artifacts_root)
    env = load_env(prof)
    if args.arch:
        torch.manual_seed(args.seed)  # the random weights; their identity ("<arch>:random") is not unique,
        env = dataclasses.replace(env, backbone=build_backbone(BackboneConfig(arch=args.arch, pretrained=None)),
                                  feature_cache=None)  # so nothing of theirs goes to the shared feature cache
    res = measure(env, args.dataset, args.shots, args.seed, args.epochs)
    print(f"{args.profile}/{args.dataset}: {res['n_train']} train images ({args.shots} shots), "
          f"{res['n_classes']} classes, {args.epochs} epochs, batch {res['batch_size']}")
    for m in ("cached", "recompute", "recompute_tower"):
        acc = res["acc_cached"] if m == "cached" else res[f"acc_{m}"]
        print(f"  {m:16s} epoch {res['epoch_s'][m]*1000:8.1f} ms   prep {res['prep_s'][m]:6.2f} s   accuracy {acc:.2f}")
    print(f"speed-up (cached vs recompute as CoOp's reference): {res['speedup']:.1f}x")
    print(f"speed-up (cached vs in-memory pixels, tower only):  {res['speedup_tower_only']:.1f}x")
    agree = abs(res["acc_cached"] - res["acc_recompute"]) < 1e-9
    print(f"accuracy cached {res['acc_cached']:.2f} vs recompute {res['acc_recompute']:.2f} "
          f"({'agree' if agree else 'DIFFER'}); max |Δθ| = {res['max_abs_theta_diff']:.2e}")

    write_json(args.out, {
        **res, "profile": args.profile,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "device": str(env.backbone.model.logit_scale.device)},
        "commit": env.commit, "backbone": env.backbone.identity, "arch": env.backbone.arch,
        "image_size": env.backbone.image_size,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
