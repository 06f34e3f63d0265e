"""Tuning units with the text tower over the positions a batch uses vs. the whole context.

``gramlib.clip.towers.text_forward`` drops the positions after a batch's last end-of-text token
(:func:`gramlib.clip.towers.used_positions`): the text tower is causal and pools at the end token,
so they never reach a feature. The naive baseline runs every prompt over the full context, as
open_clip's ``encode_text`` and the CoOp reference code do. Same units of the suite (base-to-new,
one dataset, one seed), same process, alternating modes, each measured ``--repeats`` times; the
accuracies must agree exactly (the same function).

    python benchmarks/text_positions.py --profile mini --dataset mini_imagenet
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gramlib.config import get_profile, load_params  # noqa: E402
from gramlib.io import write_json  # noqa: E402
from gramlib.clip import towers  # noqa: E402
from gramlib.experiments.protocols import load_env  # noqa: E402
from gramlib.experiments.suite import Unit, run_suite_unit, suite_config  # noqa: E402


def full_context(tower, x, tokens):
    """The naive baseline: every position of the context, as open_clip's encode_text."""
    return x, tokens


def measure(env, cfg, methods: list[str], dataset: str, seed: int = 1, repeats: int = 2) -> dict[str, dict]:
    """Per method: the unit's seconds in both modes (alternating, after a warm-up), the median
    speed-up and both modes' accuracies. ``cfg`` is the profile's suite config."""
    base2new = cfg.experiment("base2new")
    # the benchmark measures tuning, not the experiment's extras (per-epoch curves, feature shifts)
    cfg = dataclasses.replace(cfg, experiments={**cfg.experiments, "base2new": dataclasses.replace(
        base2new, curves=(), feature_shift=False, methods=tuple(cfg.methods))})
    used = towers.used_positions
    results = {}
    for method in methods:
        unit = Unit("base2new", "base2new", method, seed, base2new.shots, dataset)
        runs: dict[str, list[float]] = {"full_context": [], "used_positions": []}
        accs: dict[str, list[float]] = {}
        run_suite_unit(env, cfg, unit)  # warm-up: caches, first-call overheads
        for _ in range(repeats):
            for mode, fn in (("full_context", full_context), ("used_positions", used)):
                towers.used_positions = fn
                try:
                    t0 = time.perf_counter()
                    rows, _ = run_suite_unit(env, cfg, unit)
                    runs[mode].append(time.perf_counter() - t0)
                finally:
                    towers.used_positions = used
                accs[mode] = [r["accuracy"] for r in rows]
        full, short = statistics.median(runs["full_context"]), statistics.median(runs["used_positions"])
        results[method] = {"unit_s": runs, "speedup": full / short,
                           "accuracy_full_context": accs["full_context"], "accuracy_used_positions": accs["used_positions"],
                           "accuracies_agree": accs["full_context"] == accs["used_positions"]}
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--dataset", default="mini_imagenet")
    ap.add_argument("--methods", default="CoOp,CoOp+GRAM,UNIGRAM,IVLP")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="as in the suite's workers")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "text_positions.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    prof = get_profile(args.profile)
    cfg = suite_config(prof.name, load_params())
    env = load_env(prof)
    results = measure(env, cfg, args.methods.split(","), args.dataset, args.seed, args.repeats)
    for method, r in results.items():
        full, short = statistics.median(r["unit_s"]["full_context"]), statistics.median(r["unit_s"]["used_positions"])
        print(f"{method:12s} full context {full:6.2f} s   used positions {short:6.2f} s   "
              f"speed-up {r['speedup']:4.2f}x   accuracies {'agree' if r['accuracies_agree'] else 'DIFFER'}")

    write_json(args.out, {
        "results": results, "profile": prof.name, "dataset": args.dataset, "seed": args.seed,
        "shots": cfg.experiment("base2new").shots, "repeats": args.repeats,
        "unit": "seconds per tuning unit (train + final eval), median",
        "context_length": int(env.backbone.model.context_length),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "commit": env.commit, "backbone": env.backbone.identity,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
