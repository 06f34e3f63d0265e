"""Issue 14 item 1: how far can CoOp fit on the mini backbone, and what bounds its base gain?

A measurement script, not part of the pipeline (it needs `dvc repro world_probe` first: the world and the
backbone).  Two modes, both with the suite's own pieces (`unit_data`, `run_unit`, the feature cache):

  ceiling  - one seed, a few datasets, long runs evaluated every `every` epochs: CoOp's accuracy on its
             own shots (train) against base/new test accuracy, for several recipes.
  probe    - the world probe's protocol (16 shots, seeds 1-2, every downstream dataset, 10 and 50 epoch
             runs, the suite's augmentation) for CoOp variants; prints dataset means.

Usage (repo root, venv on PATH):
  python notes/prototypes/coop_capacity.py ceiling mini_glyphs,mini_imagenet \
      '[{"name": "sgd2e-2", "lr": 0.02, "epochs": 200, "every": 50, "policy": "none"}]'
  python notes/prototypes/coop_capacity.py probe \
      '[{"name": "rand4", "opts": {"n_ctx": 4, "ctx_init": null}}]'
Results of 2026-12-05 (AMD EPYC, 2 threads): coop_capacity_2026-12-05.txt beside this file.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from gramlib.config import get_profile
from gramlib.experiments.protocols import load_env, run_unit, unit_data

DATASETS = ["mini_imagenet", "mini_doodles", "mini_glyphs", "mini_textures", "mini_cartoons", "mini_neon",
            "mini_polygons"]


def coop(env, dataset: str, seed: int, c: dict, epochs: int, every: int) -> dict[int, dict[str, float]]:
    train_set, targets = unit_data(env, "base2new", dataset, 16, seed, train_split=True)
    rows = run_unit(env, "base2new", "CoOp", seed, 16, train_set, targets, learner_name="coop",
                    learner_opts=c.get("opts"), train={"lr": c.get("lr", 0.002), "epochs": epochs, "eval_every": every},
                    policy=c.get("policy", "aug:10:0.5"))
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["epoch"], {})[r["split"]] = r["accuracy"]
    return out


def main(mode: str, *args: str) -> None:
    torch.set_num_threads(2)
    env = load_env(get_profile("mini"))
    if mode == "ceiling":
        datasets, confs = args[0].split(","), json.loads(args[1])
        for d in datasets:
            for c in confs:
                by = coop(env, d, 1, c, c["epochs"], c.get("every", c["epochs"]))
                print(d, c["name"], {e: {k: round(v, 1) for k, v in by[e].items()} for e in sorted(by)}, flush=True)
    elif mode == "probe":
        for c in json.loads(args[0]):
            acc: dict[tuple, list[float]] = {}
            for d in DATASETS:
                for s in (1, 2):
                    for ep in (10, 50):
                        for split, a in coop(env, d, s, c, ep, ep)[ep].items():
                            acc.setdefault((d, ep, split), []).append(a)
            per = {k: float(np.mean(v)) for k, v in acc.items()}
            means = {f"{sp}{ep}": round(float(np.mean([per[(d, ep, sp)] for d in DATASETS])), 2)
                     for ep in (10, 50) for sp in ("base", "new", "train")}
            print(c["name"], means, flush=True)
            print("   new10/new50/base10 per dataset:",
                  {d: tuple(round(per[(d, e, s)], 1) for e, s in ((10, "new"), (50, "new"), (10, "base"))) for d in DATASETS})
    else:
        raise SystemExit("usage: coop_capacity.py {ceiling DATASETS CONFIGS | probe CONFIGS}")


if __name__ == "__main__":
    main(*sys.argv[1:])
