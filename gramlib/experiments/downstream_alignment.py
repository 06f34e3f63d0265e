"""The regulator's effect at test time (issue 15): on each downstream dataset, does R^phi turn the
K-shot training gradient towards the test-set gradient?  And the report that joins it with the
held-out meta-task measurement of the meta-training run (:mod:`gramlib.gram.regulator_effect`).

One "task" here is a (dataset, data seed): the base-to-new protocol's K shots of the base classes
(the gradient the few-shot loop regulates, eq. 7) against the base test set, at theta_0/phi_0
(before meta-training) and theta*/phi* (after), with the few-shot loop's own loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from gramlib.clip.zeroshot import template_for
from gramlib.config import Profile
from gramlib.experiments.protocols import Env, load_env, make_learner, unit_data
from gramlib.gram.meta_train import EFFECT_NAME
from gramlib.gram.regulator_effect import departure, effect_table, gradient_alignment
from gramlib.gram.test_time import load_meta_result
from gramlib.io import load_safetensors
from gramlib.tuning.inputs import TrainData, eval_inputs, train_inputs
from gramlib.tuning.train import loss_fn as tuning_loss


def batch_loss(learner: Any, data: TrainData) -> Callable[[Mapping[str, Tensor], tuple[Tensor, Tensor]], Tensor]:
    """The few-shot loop's own loss (:func:`gramlib.tuning.train.loss_fn`) on one whole (inputs, labels)
    batch, as a pure function of theta (class names and cached text features from ``data``)."""

    def loss(theta: Mapping[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        return tuning_loss(learner, theta, batch[0], batch[1], data, learner.device, "fp32")

    return loss


def run_stages(run_dir: str | os.PathLike) -> dict[str, tuple[dict, dict]]:
    """{before: (theta_0, phi_0), after: (theta*, phi*)} of a finished meta-training run."""
    d = Path(run_dir)
    for name in ("theta_init.safetensors", "phi_init.safetensors"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d / name} missing: re-run the meta-training run (written since issue 15)")
    res = load_meta_result(d)
    return {"before": (load_safetensors(d / "theta_init.safetensors"), load_safetensors(d / "phi_init.safetensors")),
            "after": (res.theta, res.phi)}


def downstream_rows(env: Env, run_dir: str | os.PathLike, datasets: Sequence[str], shots: int,
                    seeds: Sequence[int]) -> pd.DataFrame:
    """Per (dataset, seed, stage): cos(g_K-shot, g_test) raw and regulated, and phi's departure."""
    res = load_meta_result(run_dir)
    stages = run_stages(run_dir)
    phi0 = stages["before"][1]
    reg = res.regulator
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        for seed in seeds:
            train_set, targets = unit_data(env, "base2new", dataset, shots, seed)
            base = targets[0]
            learner = make_learner(env, res.cfg.learner, template_for(env.templates, dataset), res.cfg.learner_options())
            tr = train_inputs(learner, env.backbone, train_set.train, train_set.classnames, cache_dir=env.feature_cache)
            te = eval_inputs(learner, env.backbone, base.data, base.classnames, cache_dir=env.feature_cache)
            loss = batch_loss(learner, tr)  # same class names (the base classes) on both sides
            train_batch, test_batch = (tr.bank.views[0], tr.bank.labels), (te.bank.views[0], te.bank.labels)
            for stage, (theta, phi) in stages.items():
                rows.append({"stage": stage, "split": "downstream", "dataset": dataset, "seed": seed,
                             **gradient_alignment(theta, phi, train_batch, test_batch, loss, reg, phi0)})
    return pd.DataFrame(rows)


def regulator_effect_report(profile: Profile, run: str, datasets: Sequence[str], shots: int, seeds: Sequence[int],
                            env: Env | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(per-task rows of both splits, the EFFECT_COLUMNS table, departures) of meta-training run ``run``."""
    run_dir = profile.artifacts / "meta" / run
    path = run_dir / EFFECT_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run {run!r} held out no topics (meta.heldout_topics: 0) "
                                "or predates issue 15; set meta.heldout_topics > 0 and re-run meta_train")
    heldout = pd.read_csv(path)
    down = downstream_rows(env or load_env(profile), run_dir, datasets, shots, seeds)
    per_task = pd.concat([heldout, down], ignore_index=True)
    deps = {"regulator_departure": departure(per_task, "after", "heldout_tasks"),
            "regulator_departure_downstream": departure(per_task, "after", "downstream")}
    return per_task, effect_table(per_task), deps


__all__ = ["batch_loss", "downstream_rows", "regulator_effect_report", "run_stages"]
