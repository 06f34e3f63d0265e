"""Few-shot prompt tuning with the paper's recipe (CoCoOp's), a gradient hook, checkpoints and resume.

Recipe: SGD (momentum 0.9, weight decay 5e-4), one warm-up epoch at a constant 1e-5, then a cosine
schedule over the epochs (Dassl's ``ConstantWarmupScheduler`` + ``CosineAnnealingLR`` stepped per
epoch, so epoch e >= 1 runs at ``lr * (1 + cos(pi * e / epochs)) / 2``), 10 epochs by default.

The gradient hook ``grad_transform(grads) -> grads`` sees the gradient of θ *including* weight decay
(decay is folded into the gradient instead of being applied inside SGD) and its output is what SGD
steps on. GRAM's test-time update (eq. 7) is ``θ' = θ - α R^φ(∇L)``: plug ``R^φ`` in here. Folding
decay in first means a hook that returns zeros really freezes θ, and R^φ regulates the full update.

Determinism and resume: every epoch's shuffle and view choice come from a generator seeded by
(seed, epoch), not from a running RNG, so a run resumed from the checkpoint of epoch e replays
epochs e+1.. exactly (θ identical to an uninterrupted run). The checkpoint is the ``tuning`` set of
:mod:`gramlib.checkpoint` in ``ckpt_dir`` (θ, optimizer, scheduler, RNG states, history and the
run's fingerprint, committed as one; its step is the number of completed epochs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gramlib.checkpoint import checkpoint_step, load_checkpoint, restore_training_state, save_training_checkpoint
from gramlib.tuning.inputs import TrainData
from gramlib.tuning.recipe import LEARNER_DEFAULTS, TrainConfig, lr_at  # noqa: F401 (re-exported)
from gramlib.prompts.base import PromptLearner

log = logging.getLogger(__name__)

GradTransform = Callable[[dict[str, Tensor]], dict[str, Tensor]]
EvalFn = Callable[[PromptLearner, dict[str, Tensor], int], Mapping[str, float]]

@dataclass
class TrainResult:
    theta: dict[str, Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None  # last completed epoch found in ckpt_dir (None: fresh start)
    runtime_s: float = 0.0  # wall time of this call (training + evaluation)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle and view choice: a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise ValueError("bf16 autocast is for CUDA; CPU training stays fp32 (fp16/bf16 on CPU: CoOp issue #59)")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def loss_fn(learner: PromptLearner, theta: Mapping[str, Tensor], inputs: Tensor, labels: Tensor,
            data: TrainData, device: torch.device, precision: str) -> Tensor:
    """Cross-entropy of the learner's logits (eq. 1) on one batch, plus the learner's auxiliary loss.

    The auxiliary loss is the hook for regularised learners (``PromptLearner.logits_and_aux_loss``;
    RESTORE's λ_fs·L_fs, its eq. 10); learners without one return None and the loss is the
    cross-entropy alone, as before.
    """
    with _autocast(device, precision):
        logits, aux = learner.logits_and_aux_loss(dict(theta), inputs.to(device), data.classnames,
                                                  text_features=data.text_features)
    loss = F.cross_entropy(logits.float(), labels.to(device))
    return loss if aux is None else loss + aux.float()


# ------------------------------------------------------------------------------------------------
# checkpoints


CKPT_NAME = CKPT_KIND = "tuning"


def last_checkpoint(ckpt_dir: str | Path | None) -> int | None:
    """The last (0-based) epoch whose checkpoint was committed, or None."""
    step = None if ckpt_dir is None else checkpoint_step(ckpt_dir, CKPT_NAME)
    return None if step is None else step - 1


def _fingerprint(learner: PromptLearner, cfg: TrainConfig, n_train: int) -> dict[str, Any]:
    theta = learner.prompt_params()
    return {"config": cfg.to_dict(), "learner": type(learner).__name__, "n_train": n_train,
            "theta": {k: list(v.shape) for k, v in sorted(theta.items())}}


def save_epoch_checkpoint(ckpt_dir: Path, epoch: int, theta: Mapping[str, Tensor], opt: torch.optim.Optimizer,
                          sched: torch.optim.lr_scheduler.LRScheduler, history: list, fingerprint: dict) -> None:
    """Commit the state after 0-based epoch ``epoch`` as one set (older sets go after the commit)."""
    save_training_checkpoint(ckpt_dir, CKPT_NAME, epoch + 1, kind=CKPT_KIND, params={k: theta[k] for k in sorted(theta)},
                             optimizers={"sgd": opt}, schedulers={"lr": sched},
                             extra={"fingerprint": fingerprint, "history": history})


def load_epoch_checkpoint(ckpt_dir: Path, theta: Mapping[str, Tensor], opt: torch.optim.Optimizer,
                          sched: torch.optim.lr_scheduler.LRScheduler, fingerprint: dict) -> tuple[int, list]:
    """Restore θ, optimizer, scheduler and RNG; returns (last completed 0-based epoch, history so far).

    A checkpoint of another run (config, learner, data size or θ shapes) is refused before anything
    is touched: resuming it would silently mix two experiments.
    """
    ck = load_checkpoint(ckpt_dir, CKPT_NAME, kind=CKPT_KIND)
    extra = ck.extra if isinstance(ck.extra, dict) else {}
    if extra.get("fingerprint") != fingerprint:
        raise ValueError(f"{ck.path}: checkpoint was written by a different run "
                         f"({json.dumps(extra.get('fingerprint'), sort_keys=True)} != "
                         f"{json.dumps(fingerprint, sort_keys=True)}); use another ckpt_dir or delete it")
    restore_training_state(ck, params={k: theta[k] for k in sorted(theta)}, optimizers={"sgd": opt},
                           schedulers={"lr": sched})
    return ck.step - 1, list(extra["history"])


# ------------------------------------------------------------------------------------------------
# the loop


def train_prompt(learner: PromptLearner, train_data: TrainData, cfg: TrainConfig,
                 grad_transform: GradTransform | None = None, eval_fn: EvalFn | None = None,
                 ckpt_dir: str | Path | None = None) -> TrainResult:
    """Tune the learner's θ in place on ``train_data``; returns the final θ (detached) and history.

    ``eval_fn(learner, theta, epoch)`` returns metrics recorded in the history (epochs are 1-based
    there). With ``ckpt_dir`` a checkpoint is written after every epoch and an existing one is
    resumed; a checkpoint from a different config or learner raises.
    """
    theta = learner.prompt_params()
    if not theta:
        raise ValueError(f"{type(learner).__name__} has no prompt parameters to train")
    if len(train_data) == 0:
        raise ValueError("no training data")
    names = sorted(theta)
    params = [theta[k] for k in names]
    device = learner.device
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    # LambdaLR's factor is relative to the initial lr: lr_at / lr (guarding lr = 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: lr_at(e, cfg) / cfg.lr if cfg.lr > 0 else 0.0)
    fingerprint = _fingerprint(learner, cfg, len(train_data))
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else None
    start, history, resumed = 0, [], None
    if ckpt is not None and last_checkpoint(ckpt) is not None:
        last, history = load_epoch_checkpoint(ckpt, theta, opt, sched, fingerprint)
        start, resumed = last + 1, last
        log.info("resumed from %s epoch %d", ckpt, last + 1)
    t0 = time.perf_counter()
    learner.train()
    n = len(train_data)
    for epoch in range(start, cfg.epochs):
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(n, generator=gen)
        view = train_data.bank.epoch_view(gen)
        te = time.perf_counter()
        losses = []
        starts = range(0, n, cfg.batch_size)
        for s in starts[:cfg.max_batches_per_epoch] if cfg.max_batches_per_epoch else starts:
            inputs, labels = train_data.bank.batch(order[s:s + cfg.batch_size], view)
            loss = loss_fn(learner, theta, inputs, labels, train_data, device, cfg.precision)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _apply_hook(theta, names, cfg.weight_decay, grad_transform)
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr_at(epoch, cfg), "loss": sum(losses) / len(losses),
                                  "train_s": time.perf_counter() - te}
        if eval_fn is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            learner.eval()
            with torch.no_grad():
                record.update(eval_fn(learner, {k: v.detach() for k, v in theta.items()}, epoch + 1))
            learner.train()
        history.append(record)
        if ckpt is not None:
            save_epoch_checkpoint(ckpt, epoch, theta, opt, sched, history, fingerprint)
    learner.eval()
    return TrainResult({k: v.detach().clone() for k, v in theta.items()}, history, resumed,
                       time.perf_counter() - t0)


def _apply_hook(theta: Mapping[str, Tensor], names: list[str], weight_decay: float,
                grad_transform: GradTransform | None) -> None:
    """grad <- hook(grad + wd * θ); missing grads (θ unused by the loss) count as zero."""
    grads = {}
    for k in names:
        p = theta[k]
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[k] = g + weight_decay * p.detach() if weight_decay else g
    if grad_transform is not None:
        out = grad_transform(grads)
        if set(out) != set(grads):
            raise ValueError(f"grad_transform must return the same names {sorted(grads)}, got {sorted(out)}")
        for k in names:
            if out[k].shape != grads[k].shape:
                raise ValueError(f"grad_transform changed the shape of {k!r}: {tuple(grads[k].shape)} -> "
                                 f"{tuple(out[k].shape)}")
        grads = out
    for k in names:
        theta[k].grad = grads[k].detach().to(theta[k].dtype)


@torch.no_grad()
def class_features(learner: PromptLearner, theta: Mapping[str, Tensor], data: TrainData,
                   precision: str = "auto") -> Tensor | None:
    """The (C, D) class text features that score ``data`` under a fixed θ: the cached frozen ones, or one
    text pass under θ; None for image-conditioned text (CoCoOp), which needs a pass per image."""
    if data.text_features is not None:
        return data.text_features
    with _autocast(learner.device, precision):
        return learner.class_features_under(dict(theta), data.classnames)


@torch.no_grad()
def predict(learner: PromptLearner, theta: Mapping[str, Tensor], data: TrainData, batch_size: int = 256,
            precision: str = "auto", text: Tensor | None = None) -> Tensor:
    """Predicted labels (N,) on the first view of ``data`` (the eval transform for test inputs).

    The text tower runs once for all batches (θ is fixed here), not once per batch of images; ``text``
    passes features from :func:`class_features` in, to share them between test sets with the same
    classes (ImageNet and its variants).
    """
    device = learner.device
    inputs = data.bank.views[0]
    if text is None:
        text = class_features(learner, theta, data, precision)
    preds = []
    for s in range(0, len(inputs), batch_size):
        batch = inputs[s:s + batch_size].to(device)
        with _autocast(device, precision):
            if text is None:  # image-conditioned text: one text pass per image, inside logits
                logits = learner.logits(dict(theta), batch, data.classnames)
            else:
                logits = learner.logits_under(dict(theta), batch, text)
        preds.append(logits.argmax(dim=-1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def evaluate(learner: PromptLearner, theta: Mapping[str, Tensor], data: TrainData, **kw: Any) -> float:
    """Top-1 accuracy (fraction) of θ on ``data`` (``kw``: :func:`predict`'s options)."""
    if len(data) == 0:
        return float("nan")
    return float((predict(learner, theta, data, **kw) == data.bank.labels).float().mean())


__all__ = ["LEARNER_DEFAULTS", "TrainConfig", "TrainResult", "class_features", "epoch_generator", "evaluate", "last_checkpoint",
           "lr_at", "predict", "train_prompt"]
