"""Zero-shot class prompts through the text tower: all 77 positions vs the positions the prompts use.

``gramlib.clip.zeroshot.class_text_features`` (the zero-shot table of notebook 00, on the paper profile
ImageNet's 1,000 classes and the other 10 datasets' ~3,600) ran ``CLIP.encode_text`` over ViT-B/16's whole
77-token context; a prompt such as "a photo of a goldfish." ends at position ~8. The tower is causal and
pools at the end-of-text token, so the positions after each batch's longest prompt reach no feature:
``encode_texts(..., used_positions=True)`` drops them. Same process, same weights, interleaved runs; the
features must agree to float rounding and give the same argmax on random image features (asserted).

    python benchmarks/zero_shot_text_positions.py     # ViT-B/16 text tower (random weights), ImageNet-like names

Random weights: speed does not depend on them (the ``openai`` weights cannot be downloaded here).
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
from gramlib.clip.features import encode_texts  # noqa: E402
from gramlib.config import BackboneConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "zero_shot_text_positions.json")
    args = ap.parse_args()
    commit = git_commit()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(arch=args.arch, pretrained=None))
    # ImageNet-like class names: one to three words (the fixture's and ImageNet's names are of this kind)
    words = ["goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray", "cock",
             "hen", "ostrich", "brambling", "American dipper", "night snake", "black swan", "dunlin"]
    prompts = [f"a photo of a {words[i % len(words)]} {i}." for i in range(args.classes)]
    img = F.normalize(torch.randn(4096, bb.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    runs, feats = [], {}
    for r in range(args.repeats):  # interleaved, so drift on a shared machine hits both modes
        for mode in ("all_positions", "used_positions"):
            t0 = time.perf_counter()
            feats[mode] = encode_texts(bb, prompts, None, used_positions=mode == "used_positions")
            runs.append({"repeat": r, "mode": mode, "seconds": time.perf_counter() - t0})
    diff = float((feats["all_positions"] - feats["used_positions"]).abs().max())
    if diff > 1e-4:
        raise AssertionError(f"used-position features differ by {diff}")
    same_argmax = bool(torch.equal((img @ feats["all_positions"].T).argmax(-1), (img @ feats["used_positions"].T).argmax(-1)))
    if not same_argmax:
        raise AssertionError("used-position features change a zero-shot prediction")
    best = {m: min(x["seconds"] for x in runs if x["mode"] == m) for m in ("all_positions", "used_positions")}
    tokens = bb.tokenizer(prompts)
    write_result(args.out, {
        "benchmark": "zero_shot_text_positions", "commit": commit, "machine": machine(), "threads": args.threads,
        "arch": args.arch, "classes": args.classes, "context_length": int(tokens.shape[1]),
        "used_positions": int(tokens.argmax(-1).max()) + 1, "seconds_best": best,
        "speedup": best["all_positions"] / best["used_positions"], "max_abs_feature_difference": diff,
        "predictions_identical": same_argmax, "runs": runs,
    })


if __name__ == "__main__":
    main()
