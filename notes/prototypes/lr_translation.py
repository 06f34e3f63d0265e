"""Every learner of Table 1 and of the RESTORE table at suite.lr_translation none vs temperature (seeds 1-2).

Usage (repo root, mini world and meta-training runs built): python notes/prototypes/lr_translation.py
<none|temperature> base2new,restore. Writes /tmp/lrx/<translation>/<experiment>.csv (the suite's tidy rows);
the means per method, dataset and split are in lr_translation_2026-12-05.csv beside this script.
"""
import dataclasses, sys, time
from gramlib.config import get_profile
from gramlib.experiments.spec import suite_config
from gramlib.experiments.suite import run_experiment
from gramlib.compute import compute_config
import torch
torch.set_num_threads(1)
tr, exps = sys.argv[1], sys.argv[2].split(",")
prof = get_profile("mini")
cfg = suite_config("mini", seeds=[1, 2])
cfg = dataclasses.replace(cfg, lr_translation=tr)
keep = {"base2new": ("CLIP", "CoOp", "CoOp+GRAM", "VPT", "VPT+GRAM", "UNIGRAM"), "restore": None}
for e in exps:
    exp = cfg.experiment(e)
    ms = keep.get(e) or exp.methods
    exps_new = dict(cfg.experiments); exps_new[e] = dataclasses.replace(exp, methods=tuple(m for m in exp.methods if m in ms), curves=())
    c = dataclasses.replace(cfg, experiments=exps_new)
    t = time.time()
    run_experiment(prof, c, e, f"/tmp/lrx/{tr}/{e}.csv", compute=dataclasses.replace(compute_config("mini"), backend="local"), threads=1, progress=None)
    print(e, tr, round(time.time() - t), "s", flush=True)
