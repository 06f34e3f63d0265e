"""Test time of §3.3: start from θ* and tune on the few-shot data with the regulated gradient (eq. 7).

A finished meta-training run is read back as :class:`MetaResult` (θ*, φ*, its configuration); the
regulator R^φ* becomes the few-shot loop's gradient hook (:func:`gramlib.tuning.train.train_prompt`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gramlib.gram.regulator import RegulatorConfig, regulate_gradient
from gramlib.gram.run_config import MetaTrainConfig
from gramlib.io import load_safetensors, read_json
from gramlib.prompts import PromptLearner


@dataclass
class MetaResult:
    """θ*, φ* and the configuration that produced them (read back from a run's folder)."""

    theta: dict[str, Tensor]
    phi: dict[str, Tensor]
    cfg: MetaTrainConfig

    @property
    def regulator(self) -> RegulatorConfig | None:
        """The regulator to use at test time; None for the raw-gradient ablation."""
        return self.cfg.meta.regulator if self.cfg.meta.regulate else None


def load_meta_result(out_dir: str | os.PathLike) -> MetaResult:
    out = Path(out_dir)
    for name in ("theta_star.safetensors", "phi_star.safetensors", "config.json"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out / name} missing: not a finished meta-training run")
    cfg = MetaTrainConfig.from_dict(read_json(out / "config.json")["run"])
    return MetaResult(load_safetensors(out / "theta_star.safetensors"), load_safetensors(out / "phi_star.safetensors"), cfg)


def regulator_hook(phi: Mapping[str, Tensor], reg_cfg: RegulatorConfig | None) -> Callable[[dict], dict] | None:
    """``grad_transform`` for :func:`gramlib.tuning.train.train_prompt`: g -> R^phi(g) (eq. 7); None = raw g."""
    if reg_cfg is None:
        return None
    phi = {k: v.detach() for k, v in phi.items()}

    def hook(grads: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            return regulate_gradient(phi, grads, reg_cfg)

    return hook


def tune_with_regulator(learner: PromptLearner, theta_star: Mapping[str, Tensor], phi_star: Mapping[str, Tensor],
                        train_data: Any, train_cfg: Any, reg_cfg: RegulatorConfig | None = RegulatorConfig(),
                        **train_kw: Any) -> Any:
    """Test time of §3.3: start from θ* and tune on the few-shot data with R^φ*(∇L) (eq. 7).

    Runs the project's few-shot loop (:func:`gramlib.tuning.train.train_prompt`) with the regulator as its
    gradient hook; ``reg_cfg=None`` tunes with the raw gradient (the "w/o regulating" ablation).
    """
    from gramlib.tuning.train import train_prompt

    learner.load_prompt_params({k: v.to(learner.device) for k, v in theta_star.items()})
    return train_prompt(learner, train_data, train_cfg, grad_transform=regulator_hook(phi_star, reg_cfg), **train_kw)
