"""The "w/o meta-learning" ablation (Table 6, row 3): prompt pre-training by plain classification.

Instead of the bi-level loop, the prompt is trained as an ordinary classifier over the clustered
data: every kept CC3M pair with a topic is an example, its topic word is its class (topics that
share a word are one class), and θ is tuned with the project's few-shot loop
(:func:`gramlib.tuning.train.train_prompt`, CoCoOp's recipe) on the same features or images the
meta-learner sees.  The result is written like a meta-training run (``theta_star.safetensors``,
``config.json``; φ* is the untrained regulator, so test time uses the raw gradient), so the
evaluation code treats both alike.  Why this ablation matters (§4.6): it separates "more data"
from "meta-learning on that data".
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gramlib.config import Profile, get_profile, load_params, merge_layers, section_layers, sub_layers, typed
from gramlib.tuning.inputs import PixelViewBank, TrainData, ViewBank, class_text_bank
from gramlib.io import save_safetensors, write_json
from gramlib.gram.meta import MetaConfig
from gramlib.gram.meta_data import load_meta_data
from gramlib.gram.meta_train import build_meta_learner
from gramlib.gram.run_config import MetaTrainConfig, meta_layers
from gramlib.gram.regulator import init_regulator
from gramlib.gram.tasks import TaskConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Which learner, which data (same sources as meta-training) and the classification recipe."""

    learner: str = "coop"
    learner_cfg: dict[str, Any] = field(default_factory=dict)
    theta_init: str = "random"  # the meta-training variant's start (Algorithm 1: random)
    task_source: str = "chc"
    pairs_path: str | None = None
    labelled_dataset: str | None = None
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.002
    max_items: int | None = None  # sub-sample the pairs (seeded) to bound the cost
    seed: int = 1
    threads: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "meta.pretrain") -> PretrainConfig:
        """Strict (:func:`gramlib.config.typed`)."""
        return typed(cls, d, where)


def classification_data(pool_classnames: Sequence[str], members: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(item positions, labels, class names): one class per distinct topic word."""
    names = sorted(set(pool_classnames))
    label_of = {n: i for i, n in enumerate(names)}
    idx, lab = [], []
    for name, mem in zip(pool_classnames, members):
        for m in mem:
            idx.append(np.asarray(m))
            lab.append(np.full(len(m), label_of[name]))
    return np.concatenate(idx), np.concatenate(lab), names


def pretrain_prompts(profile: Profile | str, cfg: PretrainConfig, out_dir: str | os.PathLike, *,
                     backbone: Any | None = None, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train θ by classification over the clustered data; writes θ* and returns a summary."""
    from gramlib.tuning.train import TrainConfig, train_prompt

    prof = get_profile(profile) if isinstance(profile, str) else profile
    torch.set_num_threads(cfg.threads)
    # a TaskConfig of 2-way 1+0... tasks only to reuse the pool builder's filtering (any usable topic)
    mcfg = MetaTrainConfig(learner=cfg.learner, learner_cfg=dict(cfg.learner_cfg), theta_init=cfg.theta_init,
                           task_source=cfg.task_source,
                           pairs_path=cfg.pairs_path, labelled_dataset=cfg.labelled_dataset, seed=cfg.seed,
                           tasks=TaskConfig(ways=2, shots=1, query=1, domain_shift=False), steps=1)
    backbone, learner = build_meta_learner(prof, mcfg, backbone)
    data = load_meta_data(prof, mcfg, backbone, features=learner.caches_image_features, cache_dir=cache_dir)
    idx, labels, names = classification_data(data.pool.classnames, data.pool.members)
    if cfg.max_items is not None and len(idx) > cfg.max_items:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(idx), cfg.max_items, replace=False))
        idx, labels = idx[keep], labels[keep]
    idx_t, labels_t = torch.as_tensor(idx, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)
    bank = (ViewBank(data.bank[idx_t].unsqueeze(0), labels_t, True) if data.is_features  # (N, D) features
            else PixelViewBank(data.bank, idx_t, labels_t))  # pixels gathered per batch
    train_data = TrainData(bank, names, class_text_bank(learner, names))
    tcfg = TrainConfig.for_learner(cfg.learner, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                   seed=cfg.seed, warmup_epochs=0)
    res = train_prompt(learner, train_data, tcfg)
    out = Path(out_dir)
    theta = {k: v.detach().clone() for k, v in res.theta.items()}
    phi = init_regulator(theta, MetaConfig().regulator)
    save_safetensors(out / "theta_star.safetensors", theta, metadata={"learner": cfg.learner})
    save_safetensors(out / "phi_star.safetensors", phi, metadata={"kind": "untrained"})
    # config.json in the meta-training layout: regulate=False, so test time uses the raw gradient
    run = dataclasses.replace(mcfg, meta=MetaConfig(regulate=False))
    write_json(out / "config.json", {"run": run.to_dict(), "profile": prof.name, "pretrain": dataclasses.asdict(cfg)})
    summary = {"n_items": int(len(idx)), "n_classes": len(names), "history": res.history, "runtime_s": res.runtime_s}
    write_json(out / "summary.json", summary)
    return summary


def pretrain_config(profile_name: str, variant: str | None = None, params: dict | None = None) -> PretrainConfig:
    """The ablation of a meta-training variant: its learner and task source, ``meta.pretrain``'s recipe."""
    params = load_params() if params is None else params
    layers = meta_layers(profile_name, variant, params)  # checks the variants' other keys
    # every pretrain block of the section on its own, whichever run is asked for: a typo fails with its key path
    section = section_layers("meta", profile_name, params)
    blocks = sub_layers(section, "pretrain") + [layer for v in merge_layers(sub_layers(section, "variants"))
                                                for layer in sub_layers(section, "variants", v, "pretrain")]
    for where, block in blocks:
        typed(PretrainConfig, block, where)
    run = merge_layers(layers)
    base = {"learner": run.get("learner", "coop"), "learner_cfg": run.get("learner_cfg", {}),
            "theta_init": run.get("theta_init", "random"), "task_source": run.get("task_source", "chc")}
    return typed(PretrainConfig, base, "meta", over=sub_layers(layers, "pretrain"))
