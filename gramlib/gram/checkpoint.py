"""GRAM meta-training checkpoints: a thin adaptor from MetaState to :mod:`gramlib.checkpoint`.

A checkpoint is the generic set named ``meta_state`` in ``ckpt_dir`` (``meta_state.json`` is the
commit record; see gramlib/checkpoint.py for the layout and the commit protocol): theta and phi
(params ``theta/<k>``, ``phi/<k>``), both optimizers, the step, every global RNG, and as JSON the
MetaConfig (provenance) and the caller's ``extra`` (e.g. the task sampler's generator state).

Restoring all three global RNGs makes a resumed run bit-identical to an uninterrupted one on the
same machine (see tests/test_meta_checkpoint.py), provided the task sampler draws from them (or
stores its own generator state in ``extra``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from torch import Tensor

from gramlib.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    record_path,
    restore_rng_state,
    restore_training_state,
    save_training_checkpoint,
)
from gramlib.checkpoint import checkpoint_exists as _exists
from gramlib.gram.meta import MetaConfig, MetaState
from gramlib.io import json_default

NAME = "meta_state"
KIND = "gram-meta"


def checkpoint_json(ckpt_dir: str | Path) -> Path:
    """The commit record of the meta-training checkpoint in ``ckpt_dir``."""
    return record_path(ckpt_dir, NAME)


def checkpoint_exists(ckpt_dir: str | Path) -> bool:
    """True once a checkpoint has been committed in ``ckpt_dir``."""
    return _exists(ckpt_dir, NAME)


def _params(state: MetaState) -> dict[str, Tensor]:
    return {**{f"theta/{k}": v for k, v in state.theta.items()}, **{f"phi/{k}": v for k, v in state.phi.items()}}


def _optimizers(state: MetaState) -> dict[str, Any]:
    return {"theta": state.opt_theta, "phi": state.opt_phi}


def save_meta_checkpoint(
    ckpt_dir: str | Path,
    state: MetaState,
    cfg: MetaConfig | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Commit ``state`` (and the global RNG states) to ``ckpt_dir``; returns the record's path.

    ``extra`` is any JSON-able mapping (e.g. a task sampler's generator state, the data hash); it is
    handed back by :func:`load_meta_checkpoint`.
    """
    blob = {"config": None if cfg is None else cfg.to_dict(), "extra": dict(extra) if extra is not None else None}
    return save_training_checkpoint(ckpt_dir, NAME, state.step, kind=KIND, params=_params(state),
                                    optimizers=_optimizers(state), extra=blob)


class LoadedCheckpoint(NamedTuple):
    step: int
    config: dict[str, Any] | None  # the MetaConfig recorded at save time (as a dict)
    extra: dict[str, Any] | None


def load_meta_checkpoint(ckpt_dir: str | Path, state: MetaState, *, restore_rng: bool = True) -> LoadedCheckpoint:
    """Load the checkpoint in ``ckpt_dir`` into ``state`` in place (theta, phi, optimizers, step).

    ``state`` must be built the same way as the saved one (same entries, shapes and optimizer
    kinds), e.g. by the same init function.  Optimizer hyper-parameters come from the checkpoint
    (PyTorch's load_state_dict semantics).  Any inconsistency raises a ValueError naming the file.
    """
    ck = load_checkpoint(ckpt_dir, NAME, kind=KIND)
    if not isinstance(ck.extra, dict):
        raise ValueError(f"{ck.path}: incomplete checkpoint record (no meta-training extra)")
    restore_training_state(ck, params=_params(state), optimizers=_optimizers(state), restore_rng=restore_rng)
    state.step = ck.step
    return LoadedCheckpoint(ck.step, ck.extra.get("config"), ck.extra.get("extra"))


class Resumed(NamedTuple):
    state: MetaState
    resumed: bool
    extra: dict[str, Any] | None


def resume_or_init(
    ckpt_dir: str | Path,
    init_fn: Callable[[], MetaState],
    cfg: MetaConfig | None = None,
    *,
    restore_rng: bool = True,
) -> Resumed:
    """Build a fresh state with ``init_fn``; if ``ckpt_dir`` holds a checkpoint, load it into that state.

    When ``cfg`` is given and differs from the recorded config a warning is issued (resuming with
    changed hyper-parameters is allowed but rarely intended).
    """
    state = init_fn()
    if not checkpoint_exists(ckpt_dir):
        return Resumed(state, False, None)
    loaded = load_meta_checkpoint(ckpt_dir, state, restore_rng=restore_rng)
    if cfg is not None and loaded.config is not None:
        now = json.loads(json.dumps(cfg.to_dict(), default=json_default))  # as it reads back from JSON
        if now != loaded.config:
            changed = sorted(k for k in set(now) | set(loaded.config) if now.get(k) != loaded.config.get(k))
            warnings.warn(f"resuming {checkpoint_json(ckpt_dir)} with a changed MetaConfig: {changed}", stacklevel=2)
    return Resumed(state, True, loaded.extra)


__all__ = [
    "LoadedCheckpoint",
    "Resumed",
    "capture_rng_state",
    "checkpoint_exists",
    "checkpoint_json",
    "load_meta_checkpoint",
    "restore_rng_state",
    "resume_or_init",
    "save_meta_checkpoint",
]
