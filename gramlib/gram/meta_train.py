"""GRAM meta-training (Algorithm 1): the driver.

``meta_train(profile, cfg, out_dir)`` builds theta from a prompt learner and phi from the
regulator, samples tasks (:mod:`gramlib.gram.tasks`) and runs :func:`gramlib.gram.meta.meta_step`:

* the task loss runs on what the learner allows to cache: CoOp sees CC3M image features computed
  once (the same cache entry as the CHC stage); VPT / UNIGRAM (joint) see image tensors that go
  through the prompted vision tower;
* the class text of a task is a row of a pre-tokenised table of all topic words, indexed by a
  tensor, so every task is a dict of equally shaped tensors and the meta-batch is vmapped;
  prompts are cut after the longest end-of-text token (causal mask: the features are unchanged,
  tested against the learner's own ``logits``);
* theta, phi, optimizers, the step and every RNG (the task sampler's included) are checkpointed
  atomically every ``ckpt_every`` steps; a killed run resumes bit-identically on CPU;
* per-step metrics, incl. ``grad_cosine`` (Figure 3b), go to ``meta_log.csv``; the end products are
  ``theta_star.safetensors``, ``phi_star.safetensors``, ``config.json`` and ``summary.json``.

The run's configuration is :mod:`gramlib.gram.run_config`, its items :mod:`gramlib.gram.meta_data`,
its loss :mod:`gramlib.gram.task_loss`; test time (eq. 7 with θ*, φ*) is :mod:`gramlib.gram.test_time`.

CLI::  gramlib meta-run --profile mini --variant coop_gram [--out DIR]
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from gramlib.config import Profile, get_profile
from gramlib.gram.checkpoint import resume_or_init, save_meta_checkpoint
from gramlib.gram.meta import MetaState, init_meta_state, meta_step
from gramlib.gram.meta_data import MetaData, load_meta_data
from gramlib.gram.regulator import init_regulator
from gramlib.gram.regulator_effect import departure, heldout_effect
from gramlib.gram.run_config import MetaTrainConfig
from gramlib.gram.task_loss import TaskLoss, meta_batch, task_batches
from gramlib.gram.tasks import sample_tasks, split_topics
from gramlib.io import atomic_path, save_safetensors, write_json
from gramlib.learners import build_learner
from gramlib.prompts import PromptLearner

log = logging.getLogger(__name__)

LOG_NAME = "meta_log.csv"
EFFECT_NAME = "regulator_effect.csv"  # per held-out task: stage, cos_raw, cos_regulated, departure


def load_backbone(profile: Profile):
    from gramlib.clip.pretrain import load_profile_backbone

    return load_profile_backbone(profile)


@dataclass
class MetaTrainResult:
    theta: dict[str, Tensor]
    phi: dict[str, Tensor]
    log: pd.DataFrame
    summary: dict[str, Any]
    out_dir: Path


def build_meta_learner(profile: Profile, cfg: MetaTrainConfig, backbone: Any | None = None) -> tuple[Any, PromptLearner]:
    backbone = backbone if backbone is not None else load_backbone(profile)
    torch.manual_seed(cfg.seed)  # random prompt inits (Algorithm 1, VPT) come from the run's seed
    return backbone, build_learner(cfg.learner, backbone.model, backbone.tokenizer, **cfg.learner_options())


def _read_log(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    df = pd.read_csv(path)
    return df[df["step"] <= upto_step].to_dict("records")


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.9g")


def meta_train(profile: Profile | str, cfg: MetaTrainConfig, out_dir: str | os.PathLike, *,
               data: MetaData | None = None, backbone: Any | None = None,
               on_step: Callable[[int, dict[str, float]], None] | None = None,
               cache_dir: str | os.PathLike | None = None) -> MetaTrainResult:
    """Run Algorithm 1 for ``cfg.steps`` outer steps, resuming from ``out_dir/ckpt`` if present.

    ``on_step(step, metrics)`` is called after each step (tests use it to simulate a kill).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    out = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    t_setup = time.perf_counter()
    backbone, learner = build_meta_learner(prof, cfg, backbone)
    if data is None:
        data = load_meta_data(prof, cfg, backbone, features=learner.caches_image_features, cache_dir=cache_dir)
    loss_fn = TaskLoss(learner, data.pool.classnames, data.is_features)
    theta0 = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    phi0 = init_regulator(theta0, cfg.meta.regulator)
    if cfg.meta.meta_batch < 1:
        raise ValueError("meta.meta_batch must be >= 1")
    train_classes, heldout = split_topics(data.pool, cfg.heldout_topics, cfg.seed)
    classes = train_classes if len(heldout) else None  # None: every topic, the sampler's original stream

    def init() -> MetaState:
        return init_meta_state(theta0, phi0, cfg.meta)

    ckpt = out / "ckpt"
    state, resumed, extra = resume_or_init(ckpt, init, cfg.meta)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    if resumed:
        if extra is None or "task_rng" not in extra:
            raise ValueError(f"{ckpt}: checkpoint has no task-sampler state; cannot resume bit-identically")
        rng.bit_generator.state = extra["task_rng"]
        rows = _read_log(out / LOG_NAME, state.step)
        log.info("resumed %s at step %d", ckpt, state.step)
    setup_s = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    start = state.step
    for step in range(state.step, cfg.steps):
        tasks = sample_tasks(data.pool, rng, cfg.meta.meta_batch, classes)  # Alg. 1 line 3
        batch = meta_batch(tasks, data.bank, cfg.meta.vectorize, learner.device)
        with backbone.autocast():  # bf16 on CUDA where the profile asks for it; a no-op on CPU
            state, metrics = meta_step(state, batch, loss_fn, cfg.meta)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            rows.append({**metrics, "step": state.step})
        if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
            _write_log(out / LOG_NAME, rows)  # the log matches the checkpointed state
            save_meta_checkpoint(ckpt, state, cfg.meta, extra={"task_rng": rng.bit_generator.state,
                                                               "run": cfg.to_dict()})
        if on_step is not None:
            on_step(state.step, metrics)
    train_s = time.perf_counter() - t0
    theta = {k: v.detach().clone() for k, v in state.theta.items()}
    phi = {k: v.detach().clone() for k, v in state.phi.items()}
    save_safetensors(out / "theta_star.safetensors", theta, metadata={"learner": cfg.learner})
    save_safetensors(out / "phi_star.safetensors", phi, metadata={"kind": cfg.meta.regulator.kind})
    save_safetensors(out / "theta_init.safetensors", theta0, metadata={"learner": cfg.learner})
    save_safetensors(out / "phi_init.safetensors", phi0, metadata={"kind": cfg.meta.regulator.kind})
    effect = {}
    if len(heldout):
        effect = measure_heldout(cfg, data, loss_fn, heldout, {"before": (theta0, phi0), "after": (theta, phi)}, out)
    df = pd.DataFrame(rows)
    n_run = cfg.steps - start
    summary = {
        "profile": prof.name, "learner": cfg.learner, "steps": cfg.steps, "resumed_from": start if resumed else None,
        "setup_s": round(setup_s, 3), "train_s": round(train_s, 3),
        "steps_per_s": round(n_run / train_s, 3) if train_s > 0 and n_run else None,
        "n_classes": len(data.pool), "task_source": data.source, "skipped_classes": data.pool.skipped,
        "n_heldout_classes": int(len(heldout)), **effect,
        "theta_shapes": {k: list(v.shape) for k, v in theta.items()}, "phi_params": int(sum(v.numel() for v in phi.values())),
        **curve_summary(df),
    }
    write_json(out / "config.json", {"run": cfg.to_dict(), "profile": prof.name})
    write_json(out / "summary.json", summary)
    return MetaTrainResult(theta, phi, df, summary, out)


def measure_heldout(cfg: MetaTrainConfig, data: MetaData, loss_fn: TaskLoss, heldout: np.ndarray,
                    stages: dict[str, tuple[dict[str, Tensor], dict[str, Tensor]]], out: Path) -> dict[str, Any]:
    """The regulator's effect on ``cfg.heldout_tasks`` tasks of held-out topics (the same tasks at every
    stage, from their own seeded stream): per-task rows to ``regulator_effect.csv``, means to the summary."""
    tasks = sample_tasks(data.pool, np.random.default_rng([cfg.seed, 15]), cfg.heldout_tasks, heldout)
    reg = cfg.meta.regulator if cfg.meta.regulate else None
    per_task = heldout_effect(stages, stages["before"][1], [task_batches(t, data.bank, loss_fn.learner.device) for t in tasks], loss_fn, reg)
    with atomic_path(out / EFFECT_NAME) as tmp:
        per_task.to_csv(tmp, index=False, float_format="%.9g")
    means = per_task.groupby("stage")[["cos_raw", "cos_regulated"]].mean()
    summary: dict[str, Any] = {"regulator_departure": departure(per_task, "after")}
    for stage in stages:
        summary[f"heldout_cos_raw_{stage}"] = float(means.loc[stage, "cos_raw"])
        summary[f"heldout_cos_regulated_{stage}"] = float(means.loc[stage, "cos_regulated"])
    return summary


def curve_summary(df: pd.DataFrame, frac: float = 0.1) -> dict[str, Any]:
    """Start/end means (first and last ``frac`` of the logged steps) of the Figure 3b curve and losses."""
    if df.empty:
        return {}
    n = max(1, int(math.ceil(len(df) * frac)))
    out: dict[str, Any] = {}
    for col in ("grad_cosine", "grad_cosine_raw", "meta_loss", "query_loss_before", "query_loss_after"):
        if col in df:
            out[f"{col}_start"] = float(df[col].iloc[:n].mean())
            out[f"{col}_end"] = float(df[col].iloc[-n:].mean())
    if "grad_cosine" in df:
        out["grad_cosine_rises"] = bool(out["grad_cosine_end"] > out["grad_cosine_start"])
    return out
