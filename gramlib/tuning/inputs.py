"""Training and evaluation inputs for few-shot tuning: cached feature banks where θ allows them.

The CoOp reference code decodes, augments and runs the frozen image tower on every image at every
step. A learner whose image tower is untouched by θ (CoOp, CoCoOp, zero-shot) only ever needs the
*features* of the views it trains on, so we extract them once:

* policy ``"none"``: one view per image, CLIP's eval transform (exact caching: training on the
  bank is the same computation as recomputing the tower every step);
* policy ``"aug:N"``: N views per image drawn once with CoOp's train augmentation (seeded), one
  of them sampled per image and epoch. A fixed pool of views approximates fresh augmentation.

Learners that change the image tower (VPT, joint) get the *same* views as pixel tensors, so every
method of a table trains on identical inputs. Learners that leave the text tower alone (VPT,
zero-shot) get their class text features once (:func:`class_text_bank`).

Pixel views are held in memory: fine for the mini profile and for few-shot training sets, not for
whole paper-profile test sets of learners that need pixels (those are encoded in batches by
:func:`eval_inputs` without holding all features of all views).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gramlib.clip.factory import Backbone
from gramlib.clip.features import cached_features, data_identity, encode_images, eval_transform
from gramlib.data.coop import Datum
from gramlib.data.transforms import load_image, make_transform
from gramlib.io import stable_hash
from gramlib.prompts.base import PromptLearner
from gramlib.tuning.recipe import MIN_SCALE, parse_policy, policy_scale  # noqa: F401 (re-exported)



@dataclass
class ViewBank:
    """V views of N inputs: ``views`` (V, N, ...) holds features (V, N, D) or pixels (V, N, 3, H, W).

    ``is_features`` tells the learner which it is (its ``logits`` accepts either).
    """

    views: Tensor
    labels: Tensor  # (N,) int64
    is_features: bool

    def __post_init__(self) -> None:
        if self.views.dim() < 3 or self.views.shape[1] != len(self.labels):
            raise ValueError(f"views must be (V, N, ...) with N = {len(self.labels)} labels, "
                             f"got shape {tuple(self.views.shape)}")

    @property
    def n_views(self) -> int:
        return int(self.views.shape[0])

    def __len__(self) -> int:
        return int(self.views.shape[1])

    def epoch_view(self, generator: torch.Generator) -> Tensor:
        """One view index per input for an epoch, (N,); all zeros with a single view."""
        if self.n_views == 1:
            return torch.zeros(len(self), dtype=torch.long)
        return torch.randint(self.n_views, (len(self),), generator=generator)

    def batch(self, index: Tensor, view: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and labels of the items ``index`` (each in its epoch view ``view[index]``)."""
        return self.views[view[index], index], self.labels[index]


@dataclass
class TrainData:
    """Everything :func:`gramlib.tuning.train.train_prompt` needs: inputs, labels, class names.

    ``text_features`` is set for learners with ``caches_text_features`` (computed once).
    """

    bank: ViewBank | PixelViewBank
    classnames: list[str]
    text_features: Tensor | None = None
    policy: str = "none"

    def __len__(self) -> int:
        return len(self.bank)


@dataclass
class PixelViewBank:
    """One view of N items gathered per batch from a :class:`~gramlib.data.pixel_bank.PixelBank`
    (the interface of :class:`ViewBank` that training uses): classification over millions of CC3M
    pairs (the "w/o meta-learning" ablation of an image-side learner) never holds all their pixels."""

    pixels: Any  # PixelBank
    positions: Tensor  # (N,) rows of ``pixels``
    labels: Tensor  # (N,) int64
    is_features: bool = False

    def __post_init__(self) -> None:
        if len(self.positions) != len(self.labels):
            raise ValueError(f"{len(self.positions)} positions but {len(self.labels)} labels")

    n_views = 1

    def __len__(self) -> int:
        return len(self.labels)

    def epoch_view(self, generator: torch.Generator) -> Tensor:
        return torch.zeros(len(self), dtype=torch.long)

    def batch(self, index: Tensor, view: Tensor) -> tuple[Tensor, Tensor]:
        return self.pixels[self.positions[index]], self.labels[index]


def _view_transforms(backbone: Backbone, n_aug: int, scale: tuple[float, float] = (MIN_SCALE, 1.0)) -> list:
    if n_aug == 0:
        return [eval_transform(backbone)]
    return [make_transform(backbone.image_size, backbone.mean, backbone.std, train=True, scale=scale)
            for _ in range(n_aug)]


def _pixels(paths: Sequence[Path], transform) -> Tensor:
    return torch.stack([transform(load_image(p)) for p in paths]) if paths else torch.zeros(0, 3, 1, 1)


def view_bank(backbone: Backbone, data: Sequence[Datum], policy: str = "none", *, features: bool = True,
              cache_dir: str | os.PathLike | None = None, seed: int = 0) -> ViewBank:
    """The views of ``data`` under ``policy``: frozen image features (``features=True``) or pixels.

    Augmented view v is drawn under ``torch.manual_seed(seed * 1000 + v)`` inside a forked RNG, so
    feature and pixel banks of the same (data, policy, seed) see the same crops, and the caller's
    RNG is untouched. Feature views are cached on disk (key: model, data, transform, view, seed).
    """
    n_aug = parse_policy(policy)
    paths = [Path(d.impath) for d in data]
    labels = torch.tensor([d.label for d in data], dtype=torch.long)
    views = []
    for v, tf in enumerate(_view_transforms(backbone, n_aug, policy_scale(policy))):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + v)
            if features:
                ident = None if n_aug == 0 else [data_identity(paths), {"view": v, "seed": seed}]
                views.append(encode_images(backbone, paths, tf, cache_dir, identity=ident,
                                           desc=f"view {v}").to(backbone.model.logit_scale.device))
            else:
                views.append(_pixels(paths, tf))
    return ViewBank(torch.stack(views), labels, is_features=features)


def class_text_bank(learner: PromptLearner, classnames: Sequence[str], backbone: Backbone | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Tensor | None:
    """Class text features (C, D) for learners whose text tower θ leaves alone, else None.

    With ``backbone`` and ``cache_dir`` they are stored on disk by the learner's prompt sentences, so the
    transfer units' zero-shot and VPT rows (ImageNet's 1,000 classes, shared by -V2 and -Sketch, again in
    every experiment) run the text tower once per sentence list."""
    if not learner.caches_text_features:
        return None
    names = list(classnames)
    if backbone is None or cache_dir is None or learner.clip is not backbone.model:  # key names backbone's weights
        return learner.frozen_text_features(names)
    texts = learner.prompt_texts(names)
    key = {"learner": type(learner).__name__, "texts": stable_hash(texts, length=32), "n": len(texts)}
    return cached_features(backbone, cache_dir, "class_text", key,
                           lambda: learner.frozen_text_features(names)).to(learner.device)


def train_inputs(learner: PromptLearner, backbone: Backbone, data: Sequence[Datum], classnames: Sequence[str],
                 policy: str = "none", *, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 cache_features: bool | None = None) -> TrainData:
    """:class:`TrainData` for ``learner``: a feature bank when it caches image features, else pixels.

    ``cache_features=False`` forces pixels for a caching learner (the recompute-every-step
    baseline of ``benchmarks/coop_feature_cache.py``).
    """
    use_features = learner.caches_image_features if cache_features is None else cache_features
    if use_features and not learner.caches_image_features:
        raise ValueError(f"{type(learner).__name__} changes the image tower: its image features cannot be cached")
    _check_labels(data, classnames)
    bank = view_bank(backbone, data, policy, features=use_features, cache_dir=cache_dir, seed=seed)
    return TrainData(bank, list(classnames), class_text_bank(learner, classnames, backbone, cache_dir), policy)


def eval_inputs(learner: PromptLearner, backbone: Backbone, data: Sequence[Datum], classnames: Sequence[str], *,
                cache_dir: str | os.PathLike | None = None) -> TrainData:
    """Test inputs (eval transform, one view): cached features when the learner allows, else pixels."""
    return train_inputs(learner, backbone, data, classnames, "none", cache_dir=cache_dir)


def _check_labels(data: Sequence[Datum], classnames: Sequence[str]) -> None:
    bad = sorted({d.label for d in data if not 0 <= d.label < len(classnames)})
    if bad:
        raise ValueError(f"labels {bad[:5]} are outside the {len(classnames)} class names "
                         "(base/new relabelling not applied?)")


__all__ = ["PixelViewBank", "TrainData", "ViewBank", "class_text_bank", "eval_inputs", "parse_policy", "policy_scale", "train_inputs", "view_bank"]
