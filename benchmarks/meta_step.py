"""Meta-step throughput and memory: the project's loop vs a naive bi-level loop, same run, same tasks.

Project loop (what ``gramlib.gram.meta_train`` runs): CoOp+GRAM on CC3M image features cached once,
tasks as tensor dicts vmapped over the meta-batch, torch.func inner gradients, one autograd outer
derivative (:func:`gramlib.gram.meta.meta_step`, with the Figure 3b metrics it logs).

Naive loop (what a first implementation looks like): a Python loop over tasks, every loss call
runs the frozen image tower on the task's images again, the learner's ``logits`` with the full
text context, ``torch.autograd.grad(create_graph=True)`` for the inner step, ``backward`` for the
outer one.  Both run Algorithm 1 with the same regulator, hyper-parameters, tasks and threads.

Writes benchmarks/results/meta_step.json (speedup, steps_per_s, naive_steps_per_s,
peak_rss_mb_at_100_steps, peak_rss_mb_at_1000_steps) and prints the ratio.

    python benchmarks/meta_step.py --profile mini [--steps 1000 --naive-steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from gramlib.config import REPO, get_profile
from gramlib.io import write_json
from gramlib.gram.meta import init_meta_state, math_attention, meta_step
from gramlib.gram.meta_data import load_meta_data
from gramlib.gram.meta_train import build_meta_learner
from gramlib.gram.run_config import meta_train_config
from gramlib.gram.task_loss import TaskLoss, meta_batch
from gramlib.gram.regulator import init_regulator, regulate_gradient
from gramlib.gram.tasks import sample_tasks

OUT = REPO / "benchmarks" / "results" / "meta_step.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def naive_meta_step(learner, theta, phi, opt, tasks, pixels, cfg) -> float:
    """Algorithm 1 written the obvious way (per-task loop, images re-encoded, create_graph)."""
    names = list(theta)
    total = 0.0
    opt.zero_grad(set_to_none=True)
    with math_attention():
        losses = []
        for t in tasks:
            classnames = list(t.classnames)
            xs, ys = pixels[torch.as_tensor(t.support_idx)], torch.as_tensor(t.support_y)
            xq, yq = pixels[torch.as_tensor(t.query_idx)], torch.as_tensor(t.query_y)
            ls = F.cross_entropy(learner.logits(theta, xs, classnames), ys)  # image tower runs again
            g = torch.autograd.grad(ls, [theta[k] for k in names], create_graph=True)
            g = dict(zip(names, g))
            g_hat = regulate_gradient(phi, g, cfg.regulator) if cfg.regulate else g
            theta_p = {k: theta[k] - cfg.alpha * g_hat[k] for k in names}
            losses.append(F.cross_entropy(learner.logits(theta_p, xq, classnames), yq))
        loss = torch.stack(losses).sum() if cfg.reduction == "sum" else torch.stack(losses).mean()
        loss.backward()
    opt.step()
    total = float(loss.detach())
    return total


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--variant", default="coop_gram")
    ap.add_argument("--task-source", default=None, help="default: chc if its pairs exist, else truth")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--naive-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)

    prof = get_profile(a.profile)
    cfg = meta_train_config(prof.name, a.variant)
    src = a.task_source or ("chc" if (prof.artifacts / "chc" / "pairs.parquet").exists() else "truth")
    cfg = dataclasses.replace(cfg, task_source=src, threads=a.threads or cfg.threads)
    torch.set_num_threads(cfg.threads)
    backbone, learner = build_meta_learner(prof, cfg)
    data = load_meta_data(prof, cfg, backbone, features=True)
    loss_fn = TaskLoss(learner, data.pool.classnames, image_features=True)
    theta0 = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    phi0 = init_regulator(theta0, cfg.meta.regulator)
    mcfg = cfg.meta

    # --- the project's loop ------------------------------------------------------------------
    state = init_meta_state(theta0, phi0, mcfg)
    rng = np.random.default_rng(cfg.seed)
    for _ in range(5):  # warm-up (allocator, first-call overheads)
        meta_step(state, meta_batch(sample_tasks(data.pool, rng, mcfg.meta_batch), data.bank, mcfg.vectorize), loss_fn, mcfg)
    state = init_meta_state(theta0, phi0, mcfg)
    rng = np.random.default_rng(cfg.seed)
    rss_at, peak_at = {}, {}
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        tasks = sample_tasks(data.pool, rng, mcfg.meta_batch)
        meta_step(state, meta_batch(tasks, data.bank, mcfg.vectorize), loss_fn, mcfg)
        if step in (100, a.steps) or step % 250 == 0:
            rss_at[step], peak_at[step] = rss_mb(), peak_rss_mb()
    project_s = time.perf_counter() - t0
    steps_per_s = a.steps / project_s

    # --- the naive loop (pixels decoded now, after the project's memory was measured) ----------
    pix = load_meta_data(prof, cfg, backbone, features=False).bank
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in theta0.items()}
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in phi0.items()}
    params = list(theta.values()) + (list(phi.values()) if mcfg.regulate else [])
    opt = torch.optim.SGD(params, lr=mcfg.lr_theta, momentum=mcfg.momentum)
    rng = np.random.default_rng(cfg.seed)
    naive_meta_step(learner, theta, phi, opt, sample_tasks(data.pool, rng, mcfg.meta_batch), pix, mcfg)  # warm-up
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    for _ in range(a.naive_steps):
        naive_meta_step(learner, theta, phi, opt, sample_tasks(data.pool, rng, mcfg.meta_batch), pix, mcfg)
    naive_s = time.perf_counter() - t0
    naive_steps_per_s = a.naive_steps / naive_s

    result = {
        "speedup": round(steps_per_s / naive_steps_per_s, 2),
        "steps_per_s": round(steps_per_s, 2),
        "naive_steps_per_s": round(naive_steps_per_s, 2),
        "peak_rss_mb_at_100_steps": round(peak_at[100], 1),
        "peak_rss_mb_at_1000_steps": round(peak_at[a.steps], 1),
    }
    detail = {**result, "profile": prof.name, "variant": a.variant, "task_source": src, "threads": cfg.threads,
              "steps": a.steps, "naive_steps": a.naive_steps, "tasks": dataclasses.asdict(cfg.tasks),
              "meta_batch": mcfg.meta_batch, "rss_mb_at": {str(k): round(v, 1) for k, v in rss_at.items()},
              "peak_rss_mb_at": {str(k): round(v, 1) for k, v in peak_at.items()}}
    print(f"meta-step: project {steps_per_s:.2f} steps/s vs naive {naive_steps_per_s:.2f} steps/s "
          f"-> {result['speedup']:.1f}x; peak RSS {peak_at[100]:.0f} MB at step 100, "
          f"{peak_at[a.steps]:.0f} MB at step {a.steps}")
    write_json(a.out, result)
    print(json.dumps(detail))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
