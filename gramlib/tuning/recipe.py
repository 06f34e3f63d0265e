"""The few-shot tuning recipe as configuration: per-learner defaults, :class:`TrainConfig`, its schedule and the
augmentation policy's grammar.

Kept free of torch so that reading a suite's configuration (``gramlib.experiments.spec.suite_config``, which
every table notebook calls) does not import torch and open_clip: about 7 s per notebook on 2 cores.
:mod:`gramlib.tuning.train` runs the recipe and re-exports these names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

# One recipe for every learner (GRAM §4.1: "all methods follow the same training epochs (10 epochs),
# training schedule, and data augmentation settings in CoCoOp"; RESTORE §4.1: 10 epochs for base-to-novel):
# SGD, one warm-up epoch, cosine, 10 epochs. Only the batch size and learning rate are each learner's own
# (CoOp: bs 32, lr 2e-3; CoCoOp: bs 1, lr 2e-3; VPT/IVLP-style prompts: bs 4, lr 3.5e-3 as in MaPLe's IVLP
# configs; MaPLe and RESTORE: bs 4, lr 3.5e-3, RESTORE §4.1). A profile's deviations are named in
# params.yaml (profiles.<name>.suite.train) and listed in the README's reproduction notes.
# Zero-shot has no θ and never trains.
LEARNER_DEFAULTS: dict[str, dict[str, float]] = {
    "zeroshot": {"batch_size": 32, "lr": 0.0},
    "coop": {"batch_size": 32, "lr": 0.002},
    "cocoop": {"batch_size": 1, "lr": 0.002},
    "vpt": {"batch_size": 4, "lr": 0.0035},
    "vpt_deep": {"batch_size": 4, "lr": 0.0035},
    "joint": {"batch_size": 4, "lr": 0.0035},
    "ivlp": {"batch_size": 4, "lr": 0.0035},
    "maple": {"batch_size": 4, "lr": 0.0035},
    "restore": {"batch_size": 4, "lr": 0.0035},
}


@dataclass(frozen=True)
class TrainConfig:
    """The few-shot tuning recipe; ``for_learner`` fills batch size and lr from LEARNER_DEFAULTS."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    seed: int = 1
    precision: str = "auto"  # auto: fp32 on CPU, bf16 autocast on CUDA; or "fp32" / "bf16"
    eval_every: int = 1  # call eval_fn every k epochs (and always after the last)
    # at most this many batches per epoch (None: all): shrinks a run's steps through params alone, as the
    # paper_fixture profile does on CPU; the lr schedule is per epoch, so it is unchanged
    max_batches_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr < 0 or self.warmup_lr < 0 or self.weight_decay < 0:
            raise ValueError("lr, warmup_lr and weight_decay must be >= 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            raise ValueError(f"max_batches_per_epoch must be >= 1 or None, got {self.max_batches_per_epoch}")

    @classmethod
    def for_learner(cls, name: str, **overrides: Any) -> TrainConfig:
        if name not in LEARNER_DEFAULTS:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(LEARNER_DEFAULTS))}")
        return cls(**{**LEARNER_DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of 0-based ``epoch``: constant warm-up, then Dassl's per-epoch cosine."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


# the augmentation of the training inputs (``suite.augment``), see gramlib.tuning.inputs
_POLICY = re.compile(r"^(none|aug:(\d+)(?::(0?\.\d+|1(?:\.0*)?))?)$")
MIN_SCALE = 0.08  # CoCoOp's (Dassl's) random resized crop keeps 8-100 % of the image area


def parse_policy(policy: str) -> int:
    """Number of pre-extracted augmented views: ``"none"`` -> 0, ``"aug:N"`` or ``"aug:N:s"`` -> N (N >= 1)."""
    return _policy(policy)[0]


def policy_scale(policy: str) -> tuple[float, float]:
    """The random resized crop's area range of ``"aug:N:s"``: (s, 1); CoCoOp's (0.08, 1) without ``s``."""
    return (_policy(policy)[1], 1.0)


def _policy(policy: str) -> tuple[int, float]:
    m = _POLICY.match(policy.strip()) if isinstance(policy, str) else None
    if m is None or (m.group(2) is not None and int(m.group(2)) < 1) or (m.group(3) is not None and float(m.group(3)) <= 0):
        raise ValueError(f"augmentation policy must be 'none', 'aug:N' or 'aug:N:s' (N >= 1 views, crops of "
                         f"s..1 of the area, 0 < s <= 1; default s = {MIN_SCALE}), got {policy!r}")
    if m.group(2) is None:
        return 0, MIN_SCALE
    return int(m.group(2)), float(m.group(3)) if m.group(3) is not None else MIN_SCALE


__all__ = ["LEARNER_DEFAULTS", "MIN_SCALE", "TrainConfig", "lr_at", "parse_policy", "policy_scale"]
