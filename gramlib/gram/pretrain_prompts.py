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

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gramlib.config import Profile, get_profile, load_params
from gramlib.tuning.inputs import TrainData, ViewBank, class_text_bank
from gramlib.io import save_safetensors, write_json
from gramlib.gram.meta import MetaConfig
from gramlib.gram.meta_train import (MetaTrainConfig, build_meta_learner, load_meta_data, meta_params)
from gramlib.gram.regulator import init_regulator
from gramlib.gram.tasks import TaskConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Which learner, which data (same sources as meta-training) and the classification recipe."""

    learner: str = "coop"
    learner_cfg: dict[str, Any] = field(default_factory=dict)
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
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PretrainConfig keys: {sorted(unknown)}")
        return cls(**d)


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
    mcfg = MetaTrainConfig(learner=cfg.learner, learner_cfg=dict(cfg.learner_cfg), task_source=cfg.task_source,
                           pairs_path=cfg.pairs_path, labelled_dataset=cfg.labelled_dataset, seed=cfg.seed,
                           tasks=TaskConfig(ways=2, shots=1, query=1, domain_shift=False), steps=1)
    backbone, learner = build_meta_learner(prof, mcfg, backbone)
    data = load_meta_data(prof, mcfg, backbone, features=learner.caches_image_features, cache_dir=cache_dir)
    idx, labels, names = classification_data(data.pool.classnames, data.pool.members)
    if cfg.max_items is not None and len(idx) > cfg.max_items:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(idx), cfg.max_items, replace=False))
        idx, labels = idx[keep], labels[keep]
    views = data.bank[torch.as_tensor(idx, dtype=torch.long)].unsqueeze(0)
    train_data = TrainData(ViewBank(views, torch.as_tensor(labels, dtype=torch.long), data.is_features), names,
                           class_text_bank(learner, names))
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
    base = meta_params(profile_name, variant, params)
    return PretrainConfig.from_dict({"learner": base.get("learner", "coop"), "learner_cfg": base.get("learner_cfg", {}),
                                     "task_source": base.get("task_source", "chc"), **(base.get("pretrain", {}) or {})})


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="prompt pre-training by classification (w/o meta-learning)")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--variant", default=None,
                    help="take the learner and task source of this meta-training variant (e.g. unigram)")
    ap.add_argument("--out", default=None, help="default: artifacts/<profile>/meta/<variant>_pretrain (no_meta)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    name = a.profile or load_params().get("profile", "mini")
    prof = get_profile(name)
    cfg = pretrain_config(name, a.variant)
    out = Path(a.out) if a.out else prof.artifacts / "meta" / (f"{a.variant}_pretrain" if a.variant else "no_meta")
    print(pretrain_prompts(prof, cfg, out)["history"][-1])


if __name__ == "__main__":
    main()
