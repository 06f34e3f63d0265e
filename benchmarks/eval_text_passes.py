"""Evaluation under a learned text context: text passes per batch and per target vs. once per θ and class list.

CoOp's evaluation scores every test image against every class under a fixed θ. The naive loop (this
project's before b1401ef, and the CoOp reference's ``model_inference`` per batch) runs the text tower over
all C class prompts for every batch of test images and again for every test set; ImageNet, -V2 and -Sketch
share their 1,000 classes. ``gramlib.tuning.train.predict`` now runs it once per θ and ``run_unit`` shares
that pass between targets with the same class list. Same process, same θ, same features; the predictions
must be identical (asserted).

    python benchmarks/eval_text_passes.py                       # ViT-B/16 text tower (random weights), 300 classes
    python benchmarks/eval_text_passes.py --classes 1000 --images 2048 --out benchmarks/results/eval_text_passes_1000.json

Random weights: speed does not depend on them (the ``openai`` weights cannot be downloaded here). Image
features are random unit vectors: a learner that caches image features never runs the image tower here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _record import git_commit, machine, write_result  # noqa: E402
from gramlib.clip.factory import build_backbone  # noqa: E402
from gramlib.config import BackboneConfig  # noqa: E402
from gramlib.learners import build_learner  # noqa: E402
from gramlib.tuning.inputs import TrainData, ViewBank  # noqa: E402
from gramlib.tuning.train import class_features, predict  # noqa: E402


@torch.no_grad()
def naive(learner, theta, targets, batch_size):
    """A text pass per batch of images and per test set (the loop before)."""
    out = []
    for data in targets:
        x = data.bank.views[0]
        out.append(torch.cat([learner.logits(theta, x[s:s + batch_size], data.classnames).argmax(-1)
                              for s in range(0, len(x), batch_size)]))
    return out


def shared(learner, theta, targets, batch_size):
    """One text pass for every target with the same class list (``run_unit``'s evaluation)."""
    text = class_features(learner, theta, targets[0])
    return [predict(learner, theta, data, batch_size=batch_size, text=text) for data in targets]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=300)
    ap.add_argument("--images", type=int, default=1024, help="test images per target")
    ap.add_argument("--targets", type=int, default=3, help="test sets sharing the class list (ImageNet, -V2, -Sketch)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_text_passes.json")
    args = ap.parse_args()
    commit = git_commit()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(arch=args.arch, pretrained=None))
    learner = build_learner("coop", bb.model, bb.tokenizer)
    theta = {k: v.detach() + 0.02 * torch.randn_like(v) for k, v in learner.prompt_params().items()}
    names = [f"object number {i}" for i in range(args.classes)]
    g = torch.Generator().manual_seed(1)
    targets = []
    for _ in range(args.targets):
        feats = F.normalize(torch.randn(args.images, bb.embed_dim, generator=g), dim=-1)
        labels = torch.randint(0, args.classes, (args.images,), generator=g)
        targets.append(TrainData(ViewBank(feats.unsqueeze(0), labels, is_features=True), names))
    runs = []
    for r in range(args.repeats):  # interleaved, so drift on a shared machine hits both modes
        for mode, fn in (("naive", naive), ("shared", shared)):
            t0 = time.perf_counter()
            preds = fn(learner, theta, targets, args.batch_size)
            runs.append({"repeat": r, "mode": mode, "seconds": time.perf_counter() - t0})
            if mode == "naive":
                reference = preds
            elif not all(torch.equal(a, b) for a, b in zip(preds, reference)):
                raise AssertionError("shared-text predictions differ from the per-batch ones")
    best = {m: min(x["seconds"] for x in runs if x["mode"] == m) for m in ("naive", "shared")}
    batches = -(-args.images // args.batch_size)
    write_result(args.out, {
        "benchmark": "eval_text_passes", "commit": commit, "machine": machine(), "threads": args.threads,
        "arch": args.arch, "classes": args.classes, "images_per_target": args.images, "targets": args.targets,
        "batch_size": args.batch_size, "text_passes": {"naive": batches * args.targets, "shared": 1},
        "seconds_best": best, "speedup": best["naive"] / best["shared"], "predictions_identical": True,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
