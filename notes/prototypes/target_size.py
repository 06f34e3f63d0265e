"""Issue 14, the decay bar: do targets with more classes make CoOp's 10 -> 50 epoch new-class drop larger and
steadier?

A measurement script, not part of the pipeline (it needs this machine's mini backbone, `dvc repro backbone`).
The committed world's targets have 10-14 classes, so 5-7 base classes: 2.5-3.5 SGD steps an epoch at 16 shots
and batch 32, and a new split of 5-7 classes whose accuracy moves by several points from one draw of shots to
the next (mini_patterns_stipple's decay: standard deviation 7.3 points over 16 seeds). The issue names "more
concepts (so base and new are large ...)" as a lever. This script draws candidate targets whose label sets are
unions of today's target classes (no new concept: the corpora, the backbone and CHC stay as they are; labels
stay disjoint from the source's; base and new are the two halves of the sorted class names, as CoOp's), and
runs the world probe's protocol on them (16 shots, the suite's augmentation and lr translation, CoOp from
"a photo of a" at 10 and 50 epochs, a linear probe) beside the source.

Usage (repo root, venv on PATH):
  python notes/prototypes/target_size.py /tmp/tsize <candidate> 5,6,7,8 > notes/prototypes/target_size_<candidate>_seeds5-8_<date>.txt
<candidate>: a key of candidates() below: committed, all30, pairs or mixed; `<key>_test<N>` gives that candidate
N test images per class instead of 50 (images are pure functions of (world seed, dataset, label, split, index), so
the training pools and the first 50 test images stay those of the key: the shots are the same draw, only the
test set the decay is measured on grows).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import sys
from pathlib import Path

import torch

from gramlib.config import get_profile, load_params
from gramlib.experiments.world_probe import probe_config, run_probe
from gramlib.world.build import world_spec
from unseen_styles import scratch_world  # the same scratch world, with controls and classes of our own

KEYS = ("zs_base", "zs_new", "coop10_base", "coop10_new", "coop10_train", "coop50_base", "coop50_new",
        "coop50_train", "probe_base")


def _union(*groups):
    """The union of label groups, each concept once (the labels follow the sorted names)."""
    return list(dict.fromkeys(itertools.chain(*groups)))


def candidates(spec) -> dict[str, dict[str, dict]]:
    d = spec.datasets
    shapes, glyphs, patterns = (list(d[n].concepts) for n in
                                ("mini_shapes_sketch_blueprint", "mini_glyphs_blueprint", "mini_patterns_blueprint"))
    letters = [c for c in glyphs if c.startswith("letter_")]
    every = _union(shapes, letters, patterns)  # 9 shapes + 5 symbols, 6 letters, 10 patterns: 30
    renderings = {"sketch_blueprint": {"sketch": 0.5, "blueprint": 0.5},
                  "photo_stipple": {"photo": 0.5, "stipple": 0.5},
                  "blueprint": {"blueprint": 1.0}, "stipple": {"stipple": 1.0}}
    return {
        # the committed six targets, as controls of this script's own draw
        "committed": {n: {"concepts": list(d[n].concepts), "styles": dict(d[n].styles)}
                      for n in d if d[n].role == "target"},
        # four targets, each every one of the 30 target concepts, in each of the four renderings of today
        "all30": {f"t30_{r}": {"concepts": every, "styles": s} for r, s in renderings.items()},
        # six targets of 20-24 classes: each of today's six with a second group of classes added
        "pairs": {f"t_{groups}_{r}": {"concepts": _union(*members), "styles": renderings[r]}
                  for groups, members, r in (("shapes_patterns", (shapes, patterns), "sketch_blueprint"),
                                             ("shapes_patterns", (shapes, patterns), "photo_stipple"),
                                             ("glyphs_patterns", (glyphs, patterns), "blueprint"),
                                             ("glyphs_patterns", (glyphs, patterns), "stipple"),
                                             ("shapes_letters", (shapes, letters), "blueprint"),
                                             ("shapes_letters", (shapes, letters), "stipple"))},
        # six targets of today's label sets, every one mixed half a known and half an unseen rendering
        "mixed": {f"t_{groups}_{r}": {"concepts": list(members), "styles": renderings[r]}
                  for groups, members in (("shapes", shapes), ("glyphs", glyphs), ("patterns", patterns))
                  for r in ("sketch_blueprint", "photo_stipple")},
    }


def main(scratch: str, name: str, seeds: str = "5,6,7,8") -> None:
    torch.set_num_threads(2)
    mini = get_profile("mini")
    spec = world_spec(mini.world)
    split = dict(spec.datasets["mini_patterns_blueprint"].split)  # every target's: 96 / 6 / 50 per class
    key, _, n_test = name.partition("_test")
    if n_test:
        split["test"] = int(n_test)
    variants = {n: {**v, "split": split} for n, v in candidates(spec)[key].items()}
    root = Path(scratch) / name
    profile = scratch_world(root, variants, controls=("mini_imagenet",))
    params = copy.deepcopy(load_params())
    params["probe"]["seeds"] = [int(x) for x in seeds.split(",")]
    out = run_probe(profile, probe_config("mini", params), root / "probe.json", params=params)
    print(f"candidate {name}, seeds {seeds}: dataset means", {k: round(out[k], 2) for k in KEYS}, flush=True)
    for d, v in out["per_dataset"].items():
        print(f"    {d:40s}", {k: round(v[k], 1) for k in KEYS}, flush=True)
    for k, b in out["bars"].items():
        print(f"  bar {k}: value {b['value']:.2f}, interval {b.get('ci_low', float('nan')):.2f} .. "
              f"{b.get('ci_high', float('nan')):.2f}, {b.get('verdict', b['met'])}", flush=True)
    per_seed = out["bars_per_seed"]
    for k, v in per_seed.items():
        vals = list(v.values())
        print(f"  per seed {k}: {[round(x, 2) for x in vals]} (sd {statistics.stdev(vals):.2f})", flush=True)
    # each dataset's decay per seed, and its spread over seeds
    for d in out["per_dataset"]:
        dec = [u["coop10_new"] - u["coop50_new"] for u in out["units"] if u["dataset"] == d]
        print(f"  decay {d:40s} {[round(x, 1) for x in dec]} mean {statistics.mean(dec):.2f} "
              f"sd {statistics.stdev(dec):.2f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
