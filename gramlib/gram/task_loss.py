"""The task loss of Algorithm 1: eq. 1's cross-entropy on one task, a pure function of θ and tensors.

Every task is a dict of equally shaped tensors (images or features, labels, the pool class of each
way), so a meta-batch stacks and is vmapped; the class text of a task is a row of a pre-tokenised
table of all topic words, indexed by a tensor, and prompts are cut after the longest end-of-text
token (causal mask: the features are unchanged, tested against the learner's own ``logits``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gramlib.gram.meta import stack_tasks
from gramlib.gram.tasks import Task
from gramlib.prompts import PromptLearner
from gramlib.prompts.base import TextTower, clip_logits
from gramlib.prompts.coop import TextContextLearner


class TaskLoss:
    """``loss(theta, batch)`` = cross-entropy of eq. 1's logits on one task's batch.

    ``batch = {"x": images or features (n, ...), "y": labels (n,), "cls": pool class of each way (K,)}``
    -- tensors only, so tasks stack for ``vmap``.  Text: learners with a text context (CoOp, joint)
    splice theta["ctx"] into the pre-tokenised prompt of each class (same computation as
    ``TextContextLearner.context_text_features``); VPT indexes its frozen template features.
    """

    def __init__(self, learner: PromptLearner, classnames: Sequence[str], image_features: bool) -> None:
        if image_features and not learner.caches_image_features:
            raise ValueError(f"{type(learner).__name__} changes the image tower: it needs images, not features")
        self.learner = learner
        self.image_features = image_features
        self.text_ctx = isinstance(learner, TextContextLearner)
        if self.text_ctx:
            tower = TextTower.of(learner.clip)
            tokens = learner.tokenize(list(classnames)).to(learner.device)
            if tower.attn_mask is not None and tower.pool_type in ("argmax", "eos"):
                # causal attention + end-of-text pooling: positions after the last EOT never matter
                eot = tokens.argmax(-1) if tower.pool_type == "argmax" else (tokens == tower.eos_id).int().argmax(-1)
                tokens = tokens[:, : int(eot.max()) + 1].contiguous()
            self.tokens = tokens
        elif learner.caches_text_features:
            self.text_table = learner.frozen_text_features(list(classnames)).detach()
        else:
            raise ValueError(f"{type(learner).__name__} is not supported by the meta-training loss "
                             "(needs a text context or cacheable text features)")

    def text_features(self, theta: Mapping[str, Tensor], cls: Tensor) -> Tensor:
        if not self.text_ctx:
            return self.text_table[cls]
        return self.learner.token_text_features(theta["ctx"], self.tokens[cls])  # the learner's own forward

    def logits(self, theta: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        img = batch["x"] if self.image_features else self.learner.encode_image(dict(theta), batch["x"])
        return clip_logits(self.learner.clip, img, self.text_features(theta, batch["cls"]))

    def __call__(self, theta: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(self.logits(theta, batch), batch["y"])


def task_batches(task: Task, bank: Tensor, device: torch.device | str | None = None
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(support, query) tensor dicts of one task, gathered from the item bank (on CPU) and moved to
    ``device`` (the learner's): only a task's items ever reach the GPU, never the bank."""
    cls = torch.as_tensor(task.classes, dtype=torch.long)

    def part(idx: np.ndarray, y: np.ndarray) -> dict[str, Tensor]:
        out = {"x": bank[torch.as_tensor(idx, dtype=torch.long)], "y": torch.as_tensor(y, dtype=torch.long), "cls": cls}
        return {k: v.to(device, non_blocking=True) for k, v in out.items()} if device is not None else out

    return part(task.support_idx, task.support_y), part(task.query_idx, task.query_y)


def meta_batch(tasks: Sequence[Task], bank: Tensor, vectorize: bool, device: torch.device | str | None = None) -> Any:
    pairs = [task_batches(t, bank, device) for t in tasks]
    return stack_tasks(pairs) if vectorize else pairs
