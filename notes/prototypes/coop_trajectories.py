"""CoOp's new-class accuracy epoch by epoch, dataset by dataset, on fresh seeds (issue 14, 2026-12-06, a seventh session)

Notebook 21 reads the committed 50-epoch run (seed 1) dataset by dataset: on the stipple and sketch targets CoOp's
new-class accuracy falls to a low between epochs 10 and 33 and the last epochs win part of it back. One seed is one
draw of shots; this script runs the same 50-epoch CoOp (the suite's recipe, augmentation and lr translation, as the
world probe trains it) on fresh seeds 5-8, evaluating every epoch, and gives each (dataset, seed) curve's turning
points (gramlib.reporting.figures.turning_points) and their means over the seeds. It writes nothing under artifacts/
except feature-cache entries the probe already made.

    python notes/prototypes/coop_trajectories.py --seeds 5,6,7,8 --out notes/prototypes/coop_trajectories_seeds5-8_2026-12-06.csv
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from gramlib.config import get_profile
from gramlib.experiments.protocols import load_env, run_unit, unit_data
from gramlib.experiments.spec import suite_config
from gramlib.reporting.figures import dataset_curves, turning_points

EPOCHS = 50


def main(seeds: list[int], out: str) -> pd.DataFrame:
    torch.set_num_threads(2)
    prof = get_profile("mini")
    env = load_env(prof)
    suite = suite_config("mini")
    train = {k: v for k, v in suite.train.get("coop", {}).items() if k != "epochs"}
    rows = []
    for dataset in prof.datasets:
        for seed in seeds:
            t0 = time.perf_counter()
            train_set, targets = unit_data(env, "base2new", dataset, 16, seed)
            rows += run_unit(env, "base2new", "CoOp", seed, 16, train_set, targets, learner_name="coop",
                             train={**train, "epochs": EPOCHS, "eval_every": 1}, policy=suite.augment,
                             lr_translation=suite.lr_translation)
            print(f"{dataset} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    per_seed = pd.concat([turning_points(dataset_curves(df[df["seed"] == s]), ["method", "dataset"]).assign(seed=s)
                          for s in seeds], ignore_index=True)
    per_seed.to_csv(out, index=False, float_format="%.2f")
    return per_seed


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="5,6,7,8")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t = main([int(s) for s in a.seeds.split(",")], a.out)
    cols = ["first", "highest", "lowest", "lowest_epoch", "final", "fall_from_highest", "back_from_lowest"]
    pd.set_option("display.width", 200)
    print(t.groupby("dataset")[cols].mean().round(2).to_string())
    print("per seed, lowest epoch:\n", t.pivot(index="dataset", columns="seed", values="lowest_epoch").to_string())
    print("per seed, final - first:\n", (t.assign(d=t["final"] - t["first"]).pivot(index="dataset", columns="seed", values="d")
                                         .round(1).to_string()))
