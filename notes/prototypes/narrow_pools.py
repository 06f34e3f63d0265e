"""Issue 14, the decay bar: do few-shot pools narrower than the test distribution (a nuisance that goes with the
label in the training pool only) make CoOp's 10 -> 50 epoch new-class drop larger?

A measurement script, not part of the pipeline (it needs this machine's mini backbone). The issue names "few-shot
training pools narrower than the test distribution (real shots come from a few photographers ...)" and "nuisance
factors that correlate with the label only within the training pool" as levers. Colour was measured on
2026-12-05 (a hue window per class: nothing moved, a text-side learner cannot use colour). Here the nuisance is the
rendering, which the image tower does encode: in the committed world's two mixed-rendering targets
(mini_shapes_sketch_blueprint, mini_shapes_photo_stipple: each image one of two renderings, 50/50), the training
pool of class k draws its rendering k mod 2 with probability `bias` (default 0.875: 14 of 16 shots), while the
val and test splits keep 50/50. Every image keeps its generator (the style draw takes one uniform either way), so
with bias 0.5 the scratch world is the committed one to the bit and only training images change their rendering.

Usage (repo root, venv on PATH):
  PYTHONPATH=notes/prototypes python notes/prototypes/narrow_pools.py /tmp/np 0.875 5,6,7,8 > notes/prototypes/narrow_pools_<bias>_seeds5-8_<date>.txt
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

import gramlib.world.build as build
from gramlib.config import get_profile, load_params
from gramlib.experiments.world_probe import probe_config, run_probe
from gramlib.world.build import world_spec
from unseen_styles import scratch_world

MIXED = ("mini_shapes_sketch_blueprint", "mini_shapes_photo_stipple")
KEYS = ("zs_base", "zs_new", "coop10_base", "coop10_new", "coop10_train", "coop50_base", "coop50_new",
        "coop50_train", "probe_base")
BIAS = 0.5


ORIGINAL = build._coop_chunk


def narrow_coop_chunk(args: tuple) -> list[tuple[str, str, int, str]]:
    """build._coop_chunk, with each training job of a mixed target drawn under its label's biased style weights.

    The committed function draws a job's style as rng.choice(len(styles), p=weights) from the dataset spec; handing it,
    per label, a spec whose weights favour rendering label mod 2 changes that draw and nothing else."""
    spec, cfg, ds_name, jobs, image_dir = args
    ds = spec.datasets[ds_name]
    if ds_name not in MIXED or len(ds.styles) != 2:
        return ORIGINAL(args)
    rows = ORIGINAL((spec, cfg, ds_name, [j for j in jobs if j[2] != "train"], image_dir))
    styles = list(ds.styles)
    for label in sorted({j[1] for j in jobs if j[2] == "train"}):
        weights = {s: (BIAS if i == label % 2 else 1.0 - BIAS) for i, s in enumerate(styles)}
        biased = dataclasses.replace(spec, datasets={**spec.datasets,
                                                     ds_name: dataclasses.replace(ds, styles=weights)})
        rows += ORIGINAL((biased, cfg, ds_name, [j for j in jobs if j[2] == "train" and j[1] == label], image_dir))
    by_path = {r[1]: r for r in rows}  # back in the jobs' order, as the committed function returns them
    return [by_path[f"{concept}/{split}_{j:04d}.jpg"] for concept, _, split, j in jobs]


def main(scratch: str, bias: str = "0.875", seeds: str = "5,6,7,8") -> None:
    global BIAS
    BIAS = float(bias)
    build._coop_chunk = narrow_coop_chunk  # looked up at call time by write_coop_datasets (forked workers too)
    torch.set_num_threads(2)
    spec = world_spec(get_profile("mini").world)
    variants = {n: {"concepts": list(spec.datasets[n].concepts), "styles": dict(spec.datasets[n].styles),
                    "split": dict(spec.datasets[n].split), "bias": BIAS} for n in MIXED}
    root = Path(scratch) / f"bias{BIAS}"
    profile = scratch_world(root, variants, controls=("mini_imagenet",))
    params = copy.deepcopy(load_params())
    params["probe"]["seeds"] = [int(x) for x in seeds.split(",")]
    out = run_probe(profile, probe_config("mini", params), root / "probe.json", params=params)
    print(f"train-pool bias {BIAS}, seeds {seeds}", flush=True)
    for d, v in out["per_dataset"].items():
        print(f"    {d:40s}", {k: round(v[k], 1) for k in KEYS}, flush=True)
    for d in out["per_dataset"]:
        dec = [u["coop10_new"] - u["coop50_new"] for u in out["units"] if u["dataset"] == d]
        gain = [u["coop10_base"] - u["zs_base"] for u in out["units"] if u["dataset"] == d]
        print(f"  decay {d:40s} {[round(x, 1) for x in dec]} mean {statistics.mean(dec):.2f} "
              f"sd {statistics.stdev(dec):.2f}; base gain mean {statistics.mean(gain):.2f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
