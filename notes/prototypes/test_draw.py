"""Issue 14, resolving power: how much do the probe's bars move with the draw of the 50 test images per class?

A measurement script, not part of the pipeline (it needs this machine's mini backbone, `dvc repro backbone`).
The probe's intervals are over data seeds with each dataset's test set held fixed: they say how far another
draw of shots moves a bar, not how far another draw of test images would. The mini world can draw as many test
images as it likes (an image is a pure function of (world seed, dataset, label, split, index)), so this script
measures the second spread directly. It writes the committed targets with 200 test images per class (the
training pools, and so every seed's shots, are the committed ones; test images 0-49 are the committed test set),
then four datasets per target that share its training pool and hold one quarter of the test images each
(indices 0-49, 50-99, 100-149, 150-199), and runs the probe's protocol (16 shots, the suite's augmentation and
lr translation, CoOp from "a photo of a" at 10 and 50 epochs) on all of them beside the source. Within a seed
the four quarters see the same shots and the same training (checked: equal train-shot accuracy), so they
differ by their test images only: the spread of a bar across quarters is the test-set sampling error of a
50-per-class test set, which the probe's interval leaves out.

Usage (repo root, venv on PATH):
  python notes/prototypes/test_draw.py /tmp/tdraw 5,6,7,8,9,10,11,12 > notes/prototypes/test_draw_seeds5-12_<date>.txt
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from gramlib.config import get_profile, load_params
from gramlib.experiments.world_probe import (BAR_DIFFERENCES, bars, bars_per_seed, image_draw_variance, probe_config,
                                             run_probe, summarise)
from gramlib.io import read_json, write_json
from gramlib.world.build import world_spec
from target_size import candidates
from unseen_styles import scratch_world

QUARTERS = 4
PER_QUARTER = 50  # the committed test set's size per class


def quarter_datasets(profile, targets: list[str]) -> tuple[str, ...]:
    """Per target, QUARTERS datasets with its train/val and one quarter of its test images each."""
    coop = profile.root / profile.coop_dir
    manifest = read_json(profile.root / "world.json")
    names = []
    for t in targets:
        split = read_json(coop / t / f"split_zhou_{t}.json")
        for q in range(QUARTERS):
            name = f"{t}_q{q}"
            lo, hi = q * PER_QUARTER, (q + 1) * PER_QUARTER
            test = [it for it in split["test"] if lo <= int(Path(it[0]).stem.split("_")[1]) < hi]
            (coop / name).mkdir(exist_ok=True)
            images = coop / name / "images"
            if not images.exists():
                os.symlink((coop / t / "images").resolve(), images)
            write_json(coop / name / f"split_zhou_{name}.json", {**split, "test": test}, indent=None)
            manifest["datasets"][name] = manifest["datasets"][t]
            names.append(name)
    write_json(profile.root / "world.json", manifest)
    return tuple(names)


def main(scratch: str, seeds: str = "5,6,7,8,9,10,11,12") -> None:
    torch.set_num_threads(2)
    mini = get_profile("mini")
    spec = world_spec(mini.world)
    split = {**spec.datasets["mini_patterns_blueprint"].split, "test": QUARTERS * PER_QUARTER}
    variants = {n: {**v, "split": split} for n, v in candidates(spec)["committed"].items()}
    profile = scratch_world(Path(scratch), variants, controls=("mini_imagenet",))
    quarters = quarter_datasets(profile, list(variants))
    profile = dataclasses.replace(profile, datasets=("mini_imagenet", *quarters))
    params = copy.deepcopy(load_params())
    params["probe"]["seeds"] = [int(x) for x in seeds.split(",")]
    out = run_probe(profile, probe_config("mini", params), Path(scratch) / "probe.json", params=params)
    units = out["units"]

    def unit(ds: str, seed: int) -> dict:
        return next(u for u in units if u["dataset"] == ds and u["seed"] == seed)

    seed_list = params["probe"]["seeds"]
    # within a seed, the quarters must share shots and training: the same accuracy on the shots
    for t in variants:
        for s in seed_list:
            trains = {round(unit(f"{t}_q{q}", s)["coop50_train"], 6) for q in range(QUARTERS)}
            assert len(trains) == 1, f"{t} seed {s}: the quarters trained differently ({trains})"
    print(f"seeds {seeds}; quarters share shots and training (equal train-shot accuracy at every seed)")
    # each bar as the probe computes it (summarise, bars, bars_per_seed), on the source and quarter q's targets
    frame = pd.DataFrame(units)
    per_q = {q: frame[frame["dataset"].isin(["mini_imagenet", *(f"{t}_q{q}" for t in variants)])]
             for q in range(QUARTERS)}
    for bar in BAR_DIFFERENCES:
        value = {q: bars(summarise(uq, {})[1])[bar]["value"] for q, uq in per_q.items()}
        by_seed = {q: bars_per_seed(uq, {})[bar] for q, uq in per_q.items()}
        print(f"bar {bar}: per test quarter {[round(v, 2) for v in value.values()]}; sd across quarters "
              f"{statistics.stdev(value.values()):.2f} (a 50-per-class test set); all 200: "
              f"{statistics.mean(value.values()):.2f}")
        # the same at one seed: how far the test draw moves a single seed's bar value
        per_seed_sd = [statistics.stdev(by_seed[q][str(s)] for q in range(QUARTERS)) for s in seed_list]
        # and across seeds on the committed quarter (q0): the spread the probe's interval is made of
        seed_vals = [by_seed[0][str(s)] for s in seed_list]
        print(f"    one seed: sd across quarters {statistics.mean(per_seed_sd):.2f} (mean over seeds); "
              f"across seeds on quarter 0 {statistics.stdev(seed_vals):.2f}; per seed on quarter 0 "
              f"{[round(v, 2) for v in seed_vals]}")
    def quarter_values(t: str, hi: str, lo: str) -> list[float]:
        """Target t's seed-averaged hi - lo on each quarter's test images."""
        return [statistics.mean(unit(f"{t}_q{q}", s)[hi] - unit(f"{t}_q{q}", s)[lo] for s in seed_list)
                for q in range(QUARTERS)]

    for t in variants:
        for bar, (hi, lo) in BAR_DIFFERENCES.items():
            qs = quarter_values(t, hi, lo)
            print(f"  {t:32s} {bar:24s} per quarter {[round(v, 1) for v in qs]} sd {statistics.stdev(qs):.2f}")
    # the probe's own estimate (five folds within one 50-per-class test set, world_probe.image_draw_variance)
    # against the spread across the four independent test sets, for the targets' average (the source is one
    # test set for all quarters, so it is left out of both)
    if any("_fold" in c for c in frame):
        print("the targets' average: test-draw sd of a 50-per-class test set, folds within each quarter vs across quarters")
        for bar, (hi, lo) in BAR_DIFFERENCES.items():
            within = []
            for q in range(QUARTERS):
                sub = frame[frame["dataset"].isin([f"{t}_q{q}" for t in variants])]
                within.append(sum(v for v, _ in image_draw_variance(sub, hi, lo).values()) ** 0.5 / len(variants))
            across = [statistics.stdev(quarter_values(t, hi, lo)) for t in variants]
            pooled = sum(x * x for x in across) ** 0.5 / len(variants)
            print(f"  {bar}: folds {[round(w, 2) for w in within]} (mean {statistics.mean(within):.2f}); "
                  f"across quarters, pooled over targets {pooled:.2f}")
    write_json(Path(scratch) / "units.json", {"seeds": seed_list, "units": units})


if __name__ == "__main__":
    main(*sys.argv[1:])
