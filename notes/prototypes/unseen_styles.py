"""Issue 14 item 1: does a rendering that pre-training never shows give CoOp the headroom of EuroSAT or DTD?

A measurement script, not part of the pipeline. It needs this machine's mini backbone
(`dvc repro backbone`, `artifacts/mini/backbone/`) and leaves the committed world alone: it writes, under a
scratch folder, the source (mini_imagenet) and one target (mini_shapes_sketch_blueprint) as controls, plus
that target's 14 classes (the former mini_doodles') drawn in each of `gramlib.world.render.UNSEEN_STYLES`
(styles the web corpus never draws, so the tiny CLIP never saw them nor a caption naming them), then runs the world probe's protocol on them (16 shots,
seeds 1-2, the suite's augmentation, CoOp from "a photo of a" at 10 and 50 epochs, a linear probe) once per
CoOp learning rate given. The results files beside it were made on the world before issue 14's redesign,
whose controls were mini_imagenet and mini_doodles (sketches of the same 14 classes).

Usage (repo root, venv on PATH):
  python notes/prototypes/unseen_styles.py /tmp/unseen 0.002,0.01,0.04 > notes/prototypes/unseen_styles_<date>.txt
An optional third argument replaces the unseen-style targets by datasets of your own, as JSON:
name -> {"classes_of": <a dataset of the spec>, "styles": {style: weight}, "render": {...}, "template": ...}, e.g.
  '{"mix_blueprint": {"classes_of": "mini_glyphs_stipple", "styles": {"sketch": 0.5, "blueprint": 0.5}}}'
and a fourth, the probe's data seeds (default 1,2), e.g. 1,2,3,4.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from gramlib.config import get_profile, load_params
from gramlib.experiments.world_probe import probe_config, run_probe
from gramlib.io import read_json, write_json
from gramlib.world.build import world_spec, write_coop_datasets
from gramlib.world.render import UNSEEN_STYLES, RenderOptions
from gramlib.world.spec import DatasetSpec

CONTROLS = ("mini_imagenet", "mini_shapes_sketch_blueprint")
KEYS = ("zs_base", "zs_new", "coop10_base", "coop10_new", "coop10_train", "coop50_base", "coop50_new",
        "coop50_train", "probe_base")


def scratch_world(scratch: Path, variants: dict | None = None, controls: tuple[str, ...] = CONTROLS):
    """The controls and one target with the second control's classes per unseen style (or ``variants``), in CoOp's layout.

    A variant takes its classes and split from ``classes_of`` (a dataset of the spec), or from its own
    ``concepts`` and ``split``."""
    mini = get_profile("mini")
    spec = world_spec(mini.world)
    if variants is None:
        variants = {f"probe_{s}": {"classes_of": CONTROLS[1], "styles": {s: 1.0}} for s in UNSEEN_STYLES}

    def dataset(name: str, v: dict) -> DatasetSpec:
        like = spec.datasets.get(v.get("classes_of", ""))
        concepts = tuple(v["concepts"]) if "concepts" in v else like.concepts
        split = dict(v["split"]) if "split" in v else dict(like.split)
        return DatasetSpec(name, "target", concepts, v["styles"], RenderOptions.from_spec(v.get("render")),
                           v.get("template", "a photo of a {}."), split)

    extra = {name: dataset(name, v) for name, v in variants.items()}
    spec = dataclasses.replace(spec, datasets={**{c: spec.datasets[c] for c in controls}, **extra})
    profile = dataclasses.replace(mini, data_root=str(scratch / "data"), artifacts_root=str(scratch / "artifacts"),
                                  datasets=(*controls, *extra), variants=())
    coop = profile.root / profile.coop_dir
    manifest = profile.root / "world.json"
    if not manifest.exists() or read_json(manifest).get("variants") != variants:  # another variant list: rewrite
        shutil.rmtree(coop, ignore_errors=True)
        summary = write_coop_datasets(spec, mini.world, coop)
        write_json(manifest, {"datasets": summary, "variants": variants})  # the templates the probe reads
    backbone = profile.artifacts / "backbone"
    if not backbone.exists():
        backbone.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((mini.artifacts / "backbone").resolve(), backbone)
    return profile


def main(scratch: str, lrs: str, variants: str | None = None, seeds: str | None = None) -> None:
    torch.set_num_threads(2)
    profile = scratch_world(Path(scratch), json.loads(variants) if variants else None)
    for lr in (float(x) for x in lrs.split(",")):
        params = copy.deepcopy(load_params())
        params["suite"]["train"] = {"coop": {"lr": lr}}
        if seeds:
            params["probe"]["seeds"] = [int(x) for x in seeds.split(",")]
        out = run_probe(profile, probe_config("mini", params), Path(scratch) / f"probe_lr{lr}.json", params=params)
        print(f"CoOp lr {lr}: dataset means", {k: round(out[k], 1) for k in KEYS}, flush=True)
        for d, v in out["per_dataset"].items():
            print(f"    {d:15s}", {k: round(v[k], 1) for k in KEYS}, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
