"""What the paper profile costs: ViT-B/16 per-step time and peak memory of each piece, and an estimate of the
whole profile's device-hours per stage (issue 16).

Pieces, each on the profile's device and precision (bf16 autocast on a GPU), with random ViT-B/16 weights
(QuickGELU, as OpenAI's) written where a user's checkpoint would be:

* feature extraction: model-only images/s (batch on the device) -> ``extract_images_per_s``;
* a CoOp step over ImageNet's 1,000 class prompts (cached image features, batch 32) -> ``coop_step_s_imagenet``;
* a VPT step (batch 32 images, 500 classes' frozen template features) -> ``vpt_step_s``;
* one second-order meta-step (Algorithm 1) of CoOp+GRAM (features), VPT+GRAM and UNIGRAM (pixels) with the
  paper profile's meta-batch and a 5-way task -> ``meta_step_s_<run>``, ``peak_mem_gb_meta_<run>``.

``--small`` (a CPU: this machine, CI) keeps the 1,000 ImageNet prompts and ViT-B/16 at 224 px but shrinks the
batches and the tasks (1 task, 5 ways, 1 shot, 1 query); every number says which sizes it was measured at.
The estimate multiplies each stage's step count in the paper profile (datasets' class and image counts,
params.yaml's experiments, methods, seeds and meta-training runs) by the measured per-step cost, scaled
linearly in images and class prompts (:func:`estimate_hours`): on the device it ran on, so an estimate from
a CPU run is CPU-hours, not GPU-hours (``estimate_device`` says which).

    python benchmarks/paper_costs.py [--small] [--out benchmarks/results/paper_costs.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_paper_profile import _peak_gb, _peak_reset, _sync, standin_weights  # noqa: E402

from gramlib.config import REPO, get_profile, load_params  # noqa: E402
from gramlib.io import write_json  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "paper_costs.json"

#: (classes, training images, test images) of the paper's datasets (CoOp's splits)
DATASETS = {"imagenet": (1000, 1_281_167, 50_000), "caltech101": (100, 4_128, 2_465), "oxford_pets": (37, 2_944, 3_669),
            "stanford_cars": (196, 6_509, 8_041), "oxford_flowers": (102, 4_093, 2_463), "food101": (101, 50_500, 30_300),
            "fgvc_aircraft": (100, 3_334, 3_333), "sun397": (397, 15_880, 19_850), "dtd": (47, 2_820, 1_692),
            "eurosat": (10, 13_500, 8_100), "ucf101": (101, 7_639, 3_783)}
VARIANT_TEST = {"imagenetv2": (1000, 10_000), "imagenet_sketch": (1000, 50_889), "imagenet_a": (200, 7_500),
                "imagenet_r": (200, 30_000)}
CC3M_IMAGES = 3_100_000


class _Peak:
    """Peak memory of a block: CUDA's allocator on a GPU; on a CPU the process's RSS above its level at
    entry, sampled every 20 ms by a thread (what the block adds, not the model already loaded)."""

    def __enter__(self):
        import threading

        _peak_reset()
        proc = psutil.Process()
        self.rss0 = proc.memory_info().rss
        self.top = self.rss0
        self.stop = threading.Event()

        def sample():
            while not self.stop.wait(0.02):
                self.top = max(self.top, proc.memory_info().rss)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.gb = _peak_gb()
        if self.gb is None:
            self.gb = round((self.top - self.rss0) / 2**30, 3)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - t0) / repeats


def extraction(bb, batch: int, repeats: int) -> dict:
    x = torch.randn(batch, 3, bb.image_size, bb.image_size, device=bb.device)
    with torch.no_grad(), bb.autocast(), _Peak() as pk:
        s = _time(lambda: bb.model.encode_image(x), repeats)
    return {"images_per_s": round(batch / s, 2), "batch": batch, "peak_gb": pk.gb}


def tuning_step(bb, learner_name: str, n_classes: int, batch: int, repeats: int) -> dict:
    """One SGD step of a few-shot tuning run: CoOp on cached features, VPT on pixels."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from gramlib.learners import build_learner

    torch.manual_seed(0)
    learner = build_learner(learner_name, bb.model, bb.tokenizer)
    names = list(IMAGENET_CLASSNAMES[:n_classes])
    theta = learner.prompt_params()
    opt = torch.optim.SGD(list(theta.values()), lr=0.002, momentum=0.9)
    if learner.caches_image_features:
        x = torch.nn.functional.normalize(torch.randn(batch, bb.model.text_projection.shape[1], device=bb.device), dim=-1)
        text = None
    else:
        x = torch.randn(batch, 3, bb.image_size, bb.image_size, device=bb.device)
        text = learner.frozen_text_features(names).detach()
    y = torch.randint(0, n_classes, (batch,), device=bb.device)

    def step():
        with bb.autocast():
            logits = learner.logits(theta, x, names, text_features=text)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with _Peak() as pk:
        s = _time(step, repeats)
    return {"seconds": round(s, 3), "n_classes": n_classes, "batch": batch, "peak_gb": pk.gb}


def meta_step_cost(bb, run: str, small: bool, repeats: int) -> dict:
    """Algorithm 1's outer step (second order) of a meta-training run on random inputs of the right shape."""
    from gramlib.gram.meta import init_meta_state, meta_step
    from gramlib.gram.regulator import init_regulator
    from gramlib.gram.run_config import meta_train_config
    from gramlib.gram.task_loss import TaskLoss, meta_batch
    from gramlib.gram.tasks import pool_from_labels, sample_tasks
    from gramlib.learners import build_learner

    cfg = meta_train_config("paper", run)
    cfg = dataclasses.replace(cfg, tasks=dataclasses.replace(cfg.tasks, ways=5, **({"shots": 1, "query": 1} if small else {})),
                              meta=dataclasses.replace(cfg.meta, **({"meta_batch": 1} if small else {})))
    torch.manual_seed(0)
    learner = build_learner(cfg.learner, bb.model, bb.tokenizer, **cfg.learner_options())
    names = [f"topic {i}" for i in range(20)]
    per = 2 * (cfg.tasks.shots + cfg.tasks.query)
    labels = np.repeat(np.arange(len(names)), per)
    domains = np.tile(np.arange(2), len(labels) // 2 + 1)[: len(labels)]
    pool = pool_from_labels(labels, names, cfg.tasks, domains)
    features = learner.caches_image_features
    bank = (torch.nn.functional.normalize(torch.randn(len(labels), bb.model.text_projection.shape[1]), dim=-1) if features
            else torch.randn(len(labels), 3, bb.image_size, bb.image_size))
    loss_fn = TaskLoss(learner, names, image_features=features)
    theta0 = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    state = init_meta_state(theta0, init_regulator(theta0, cfg.meta.regulator), cfg.meta)
    rng = np.random.default_rng(0)
    holder = {"state": state}

    def step():
        batch = meta_batch(sample_tasks(pool, rng, cfg.meta.meta_batch), bank, cfg.meta.vectorize, learner.device)
        with bb.autocast():
            holder["state"], _ = meta_step(holder["state"], batch, loss_fn, cfg.meta)

    with _Peak() as pk:
        s = _time(step, repeats)
    return {"seconds": round(s, 3), "peak_gb": pk.gb, "meta_batch": cfg.meta.meta_batch, "ways": cfg.tasks.ways,
            "images_per_task": cfg.tasks.ways * (cfg.tasks.shots + cfg.tasks.query), "first_order": cfg.meta.first_order,
            "inputs": "features" if features else "pixels"}


def estimate_hours(m: dict, params: dict) -> dict:
    """Device-hours per stage of the paper profile from the measured per-step costs (linear scaling)."""
    from gramlib.experiments.spec import suite_config
    from gramlib.gram.run_config import meta_train_config

    ips = m["extraction"]["images_per_s"]
    seeds = len(params.get("seeds", [1, 2, 3]))
    paper = get_profile("paper")
    hours = {"chc_cc3m_features": CC3M_IMAGES / ips / 3600}
    # meta-training: every run the paper suite uses, its steps x the step cost of its learner kind
    per_kind = {"coop": m["meta_coop_gram"], "vpt": m["meta_vpt_gram"], "joint": m["meta_unigram"]}
    suite = suite_config("paper")
    runs = sorted({suite.methods[x].meta for e in suite.experiments.values() for x in e.methods
                   if suite.methods[x].meta and not suite.methods[x].meta.endswith("_pretrain")})
    meta_h = 0.0
    for run in runs:
        cfg = meta_train_config("paper", run)
        c = per_kind.get(cfg.learner, per_kind["joint"])
        scale = (cfg.meta.meta_batch * cfg.tasks.ways * (cfg.tasks.shots + cfg.tasks.query)) / (c["meta_batch"] * c["images_per_task"])
        meta_h += cfg.steps * c["seconds"] * (scale if c["inputs"] == "pixels" else 1.0) / 3600
    hours["meta_training"] = meta_h
    # tuning and evaluation: units x (epochs x batches x step cost) + test images / images per s
    coop_s, vpt_s = m["coop_step_imagenet"], m["vpt_step"]
    tune_h = eval_h = 0.0
    for exp in suite.experiments.values():
        targets = (exp.datasets or paper.datasets) if exp.protocol == "base2new" else (paper.source,)
        for method in exp.methods:
            spec = suite.methods[method]
            learner = spec.learner or meta_train_config("paper", spec.meta.removesuffix("_pretrain")).learner
            for ds in targets:
                n_cls, _, n_test = DATASETS[ds]
                cls = math.ceil(n_cls / 2) if exp.protocol == "base2new" else n_cls
                n_train = exp.shots * cls
                steps = (exp.epochs or 10) * math.ceil(n_train / 32)
                if learner == "zeroshot":
                    step_s = 0.0
                elif learner in ("coop", "cocoop"):
                    step_s = coop_s["seconds"] * cls / coop_s["n_classes"] * (32 / coop_s["batch"] if learner == "cocoop" else 1)
                else:
                    step_s = vpt_s["seconds"] * 32 / vpt_s["batch"] + (coop_s["seconds"] * cls / coop_s["n_classes"]
                                                                        if learner != "vpt" else 0.0)
                tune_h += seeds * steps * step_s / 3600
                tests = n_test + (sum(t for _, t in VARIANT_TEST.values()) + sum(d[2] for d in DATASETS.values())
                                  if exp.protocol == "transfer" else 0)
                eval_h += seeds * tests / ips / 3600
    hours["suite_tuning"] = tune_h
    hours["suite_evaluation"] = eval_h
    hours = {k: round(v, 2) for k, v in hours.items()}
    hours["total"] = round(sum(hours.values()), 2)
    return hours


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="reduced batches and tasks (a CPU); ViT-B/16 and 1,000 prompts kept")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    repeats = 1 if a.small else 5
    result: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                    "torch": torch.__version__, "small": a.small}
    from gramlib.clip.pretrain import load_profile_backbone

    with tempfile.TemporaryDirectory() as tmp:
        weights = standin_weights(Path(tmp) / "ViT-B-16-openai-standin.safetensors")
        paper = get_profile("paper")
        prof = dataclasses.replace(paper, data_root=str(Path(tmp) / "data"), artifacts_root=str(Path(tmp) / "artifacts"),
                                   backbone=dataclasses.replace(paper.backbone, checkpoint=str(weights)))
        bb = load_profile_backbone(prof)
        result.update(arch=prof.backbone.arch, image_size=bb.image_size, precision=bb.precision)
        m = {}
        m["extraction"] = extraction(bb, 8 if a.small else 256, repeats)
        print("extraction", m["extraction"], flush=True)
        m["coop_step_imagenet"] = tuning_step(bb, "coop", 1000, 32, repeats)
        print("coop", m["coop_step_imagenet"], flush=True)
        m["vpt_step"] = tuning_step(bb, "vpt", 500, 4 if a.small else 32, repeats)
        print("vpt", m["vpt_step"], flush=True)
        for run in ("coop_gram", "vpt_gram", "unigram"):
            m[f"meta_{run}"] = meta_step_cost(bb, run, a.small, repeats)
            print(run, m[f"meta_{run}"], flush=True)
    hours = estimate_hours(m, load_params())
    result.update({
        "extract_images_per_s": m["extraction"]["images_per_s"],
        "coop_step_s_imagenet": m["coop_step_imagenet"]["seconds"],
        "vpt_step_s": m["vpt_step"]["seconds"],
        "meta_step_s_coop_gram": m["meta_coop_gram"]["seconds"],
        "meta_step_s_vpt_gram": m["meta_vpt_gram"]["seconds"],
        "meta_step_s_unigram": m["meta_unigram"]["seconds"],
        "peak_mem_gb_meta_vpt_gram": m["meta_vpt_gram"]["peak_gb"],
        "estimated_gpu_hours_total": hours["total"],
        "estimated_hours_per_stage": hours,
        "estimate_device": result["device"],
        "estimate_note": ("hours on the device measured; a CPU run's estimate is CPU-hours at reduced batch sizes, "
                          "not GPU-hours: rerun on a GPU (the device tool) for the real figure") if not torch.cuda.is_available()
                         else "GPU-hours on this GPU, from per-step costs scaled linearly in images and class prompts",
        "pieces": m,
    })
    write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "pieces"}, indent=1))
    return result


if __name__ == "__main__":
    main()
