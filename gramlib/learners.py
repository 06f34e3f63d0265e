"""Every prompt learner by name (``gramlib.prompts`` and RESTORE from ``gramlib.restore``), configs as dataclasses.

``build_learner(name, clip_model, tokenizer, **cfg)`` is how the experiments and meta-training build a learner;
it sits above both packages so that RESTORE (built on MaPLe) can import the prompts without a cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from gramlib.prompts.base import PromptLearner
from gramlib.prompts.cocoop import CoCoOp, CoCoOpConfig
from gramlib.prompts.coop import CoOp, CoOpConfig
from gramlib.prompts.ivlp import IVLP, IVLPConfig
from gramlib.prompts.joint import JointConfig, JointPrompt
from gramlib.prompts.maple import MaPLe, MaPLeConfig
from gramlib.prompts.vpt import VPT, VPTConfig
from gramlib.prompts.zeroshot import ZeroShotCLIP, ZeroShotConfig
from gramlib.restore.learner import Restore, RestoreConfig

# name -> (learner class, config class, defaults that differ from the config's own)
LEARNERS: dict[str, tuple[Callable[..., PromptLearner], type, dict[str, Any]]] = {
    "zeroshot": (ZeroShotCLIP, ZeroShotConfig, {}),
    "coop": (CoOp, CoOpConfig, {}),
    "cocoop": (CoCoOp, CoCoOpConfig, {}),
    "vpt": (VPT, VPTConfig, {"depth": 1}),
    "vpt_deep": (VPT, VPTConfig, {"depth": None}),
    "joint": (JointPrompt, JointConfig, {}),
    "ivlp": (IVLP, IVLPConfig, {}),
    "maple": (MaPLe, MaPLeConfig, {}),
    "restore": (Restore, RestoreConfig, {}),
}


def tunes_image_tower(name: str) -> bool:
    """Whether learner ``name``'s θ enters the image tower (no cached image features): its training
    runs the image tower every step, its cost dominates a tuning or meta-training run on CPU."""
    if name not in LEARNERS:
        raise ValueError(f"unknown prompt learner {name!r}; known: {', '.join(sorted(LEARNERS))}")
    return not LEARNERS[name][0].caches_image_features


def learner_config(name: str, **cfg: Any) -> Any:
    """The config dataclass for learner ``name`` with ``cfg`` overrides (unknown keys: ValueError)."""
    if name not in LEARNERS:
        raise ValueError(f"unknown prompt learner {name!r}; known: {', '.join(sorted(LEARNERS))}")
    _, cfg_cls, defaults = LEARNERS[name]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(cfg) - fields
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name!r}; options: {sorted(fields)}")
    return cfg_cls(**{**defaults, **cfg})


def build_learner(name: str, clip_model: nn.Module, tokenizer: object, **cfg: Any) -> PromptLearner:
    """Build a prompt learner around a (frozen) open_clip model; ``cfg`` overrides its config."""
    config = learner_config(name, **cfg)
    return LEARNERS[name][0](clip_model, tokenizer, config)


__all__ = ["LEARNERS", "build_learner", "learner_config"]
