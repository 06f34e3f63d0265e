"""What the regulator R^phi adds, measured where it acts (issue 15; eq. 12, Figure 3b).

GRAM's claim for R^phi is that the regulated support gradient R^phi(g_s) points more along the
gradient of *other* data (the query set; at test time, the test set) than the raw g_s does.  The
meta-training curve of Figure 3b shows this on the tasks being trained on; here it is measured on
tasks and data meta-training never saw:

* ``heldout_tasks``: tasks drawn only from topic words held out of meta-training
  (:func:`gramlib.gram.tasks.split_topics`), support gradient vs query gradient;
* ``downstream``: a downstream dataset's K-shot training gradient vs its (base) test-set gradient.

Each is measured at meta-training's start (theta_0, phi_0) and end (theta*, phi*).  A row of
:data:`EFFECT_COLUMNS` reports the mean cosines and a t-interval of the *paired* difference
cos_regulated - cos_raw over tasks: what R adds, with its uncertainty.  ``departure`` is
||R^phi(g) - R^phi0(g)|| / ||g|| at the same g: how far phi has moved from its initialisation, in
units of the gradient it acts on (0 before meta-training by construction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from gramlib.gram.meta import LossFn, params_cosine, params_norm, task_gradient
from gramlib.gram.regulator import RegulatorConfig, regulate_gradient
from gramlib.stats import paired_interval  # re-exported: the regulator sweep and notebooks use it here

#: The columns of ``reports/meta/regulator_effect.csv`` (issue 15's bar), in this order.
EFFECT_COLUMNS = ["stage", "split", "cos_raw", "cos_regulated", "ci_low", "ci_high", "n_tasks"]
STAGES = ("before", "after")
SPLITS = ("heldout_tasks", "downstream")


def regulated(phi: Mapping[str, Tensor], g: Mapping[str, Tensor], reg: RegulatorConfig | None) -> dict[str, Tensor]:
    """R^phi(g) (eqs. 5-6); the raw g when the run has no regulator (``reg`` None)."""
    if reg is None:
        return dict(g)
    with torch.no_grad():
        return regulate_gradient(phi, g, reg)


def gradient_alignment(theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], train_batch: Any, other_batch: Any,
                       loss_fn: LossFn, reg: RegulatorConfig | None,
                       phi_ref: Mapping[str, Tensor] | None = None) -> dict[str, float]:
    """Eq. 12's alignment at theta for one pair of batches: cos(g_train, g_other) raw and regulated.

    ``train_batch`` is what the inner step (eq. 7) sees (a task's support set, a dataset's K shots);
    ``other_batch`` what the adapted prompt should serve (the query set, the test set).  With
    ``phi_ref`` also ``departure`` = ||R^phi(g) - R^phi_ref(g)|| / ||g||.
    """
    g, _ = task_gradient(theta, train_batch, loss_fn)
    g_other, _ = task_gradient(theta, other_batch, loss_fn)
    g_hat = regulated(phi, g, reg)
    out = {"cos_raw": params_cosine(g, g_other), "cos_regulated": params_cosine(g_hat, g_other)}
    if phi_ref is not None:
        out["departure"] = params_norm(g_hat, regulated(phi_ref, g, reg)) / max(params_norm(g), 1e-30)
    return out


def alignment_rows(theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], pairs: Iterable[tuple[Any, Any]],
                   loss_fn: LossFn, reg: RegulatorConfig | None, phi_ref: Mapping[str, Tensor] | None = None,
                   **labels: Any) -> list[dict[str, Any]]:
    """:func:`gradient_alignment` of every (train, other) batch pair, one row each (``task`` = its index)."""
    return [{**labels, "task": i, **gradient_alignment(theta, phi, a, b, loss_fn, reg, phi_ref)}
            for i, (a, b) in enumerate(pairs)]


def effect_table(per_task: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per-task rows (stage, split, cos_raw, cos_regulated) -> one :data:`EFFECT_COLUMNS` row per
    (stage, split); ``ci_low``/``ci_high`` bound the paired difference cos_regulated - cos_raw."""
    out = []
    for (stage, split), g in per_task.groupby(["stage", "split"], sort=False):
        lo, hi = paired_interval(g["cos_raw"], g["cos_regulated"], level)
        out.append({"stage": stage, "split": split, "cos_raw": float(g["cos_raw"].mean()),
                    "cos_regulated": float(g["cos_regulated"].mean()), "ci_low": lo, "ci_high": hi,
                    "n_tasks": int(len(g))})
    return pd.DataFrame(out, columns=EFFECT_COLUMNS)


def departure(per_task: pd.DataFrame, stage: str = "after", split: str = "heldout_tasks") -> float:
    """Mean ||R^phi*(g) - R^phi0(g)|| / ||g|| over the tasks of (stage, split): ``regulator_departure``."""
    sel = per_task[(per_task["stage"] == stage) & (per_task["split"] == split)]
    return float(sel["departure"].mean()) if len(sel) and "departure" in sel else math.nan


def heldout_effect(stages: Mapping[str, tuple[Mapping[str, Tensor], Mapping[str, Tensor]]],
                   phi0: Mapping[str, Tensor], pairs: list[tuple[Any, Any]], loss_fn: LossFn,
                   reg: RegulatorConfig | None) -> pd.DataFrame:
    """Per-task alignment on the same held-out tasks at each stage ``{name: (theta, phi)}``."""
    rows: list[dict[str, Any]] = []
    for stage, (theta, phi) in stages.items():
        rows += alignment_rows(theta, phi, pairs, loss_fn, reg, phi0, stage=stage, split="heldout_tasks")
    return pd.DataFrame(rows)


__all__ = ["EFFECT_COLUMNS", "SPLITS", "STAGES", "alignment_rows", "departure", "effect_table",
           "gradient_alignment", "heldout_effect", "paired_interval", "regulated"]
