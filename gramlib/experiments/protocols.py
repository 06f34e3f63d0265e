"""The three evaluation protocols of GRAM's §4, writing tidy result rows.

* ``base2new``: few-shot sampling on all classes *first*, then the base/new split (CoCoOp); train on
  the base classes' K shots, test on the base and the new test sets. H = 2BN/(B+N) is computed on
  accuracies averaged over seeds (and over datasets for the average), never per seed.
* ``cross_domain``: train on the source dataset (all classes, K shots), test on the source and its
  shifted variants (ImageNet-V2/-Sketch/-A/-R or their mini counterparts).
* ``cross_dataset``: train on the source, test the learned prompt zero-shot on every other dataset.

One row per (protocol, dataset, method, seed, shots, epoch, split) with the columns of
:data:`COLUMNS`; ``accuracy`` is top-1 in percent, ``runtime_s`` the training time up to that epoch
(for zero-shot: the evaluation time); ``acc_fold0``..``acc_fold4`` the accuracy on each class-stratified fold
of the test split (:mod:`gramlib.test_draw`; NaN where a class has fewer test images than folds), from which
the tables' intervals count the draw of the test images. Rows are appended to a CSV; tables are views of
those rows.

The experiments of the tables run through :mod:`gramlib.experiments.suite` (``gramlib suite``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gramlib.clip.factory import Backbone
from gramlib.config import REPO, Profile
from gramlib.data.coop import CoopDataset, fewshot_split, load_dataset, subsample_dataset
from gramlib.tuning.inputs import eval_inputs, train_inputs
from gramlib.io import atomic_path
from gramlib.learners import LEARNERS, build_learner
from gramlib.prompts import PromptLearner
from gramlib.prompts.zeroshot import TemplateText
from gramlib.test_draw import FOLD_COLUMNS, fold_accuracies
from gramlib.tuning.lr_translation import translate_lr
from gramlib.tuning.train import GradTransform, TrainConfig, class_features, predict, train_prompt
from gramlib.clip.zeroshot import dataset_templates, template_for

log = logging.getLogger(__name__)

COLUMNS = ["protocol", "dataset", "method", "seed", "shots", "epoch", "split", "accuracy", "n_test",
           "runtime_s", "profile", "git_commit", *FOLD_COLUMNS]
METHODS = tuple(LEARNERS)
# learners whose config has a hand-crafted template (their text side is the template)
_TEMPLATE_METHODS = {"zeroshot", "vpt", "vpt_deep"}


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in LEARNERS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or methods!r}; known: {', '.join(METHODS)}")


# ------------------------------------------------------------------------------------------------
# environment


@dataclass
class Env:
    """A profile's loaded pieces shared by all runs: backbone, templates, caches, provenance."""

    profile: Profile
    backbone: Backbone
    templates: dict[str, str]
    feature_cache: Path
    fewshot_cache: Path
    commit: str

    @property
    def coop_root(self) -> Path:
        return self.profile.root / self.profile.coop_dir


def load_env(profile: Profile, feature_cache: str | os.PathLike | None = None) -> Env:
    """Build the profile's frozen CLIP (its pre-trained checkpoint for tiny archs) and caches."""
    from gramlib.clip.pretrain import load_profile_backbone
    from gramlib.reporting.provenance import git_commit

    backbone = load_profile_backbone(profile)
    g = git_commit()
    commit = str(g["commit"]) + ("-dirty" if g.get("dirty") else "")
    return Env(profile, backbone, dataset_templates(profile.root),
               Path(feature_cache) if feature_cache else REPO / "cache" / "features",
               profile.artifacts / "fewshot", commit)


def make_learner(env: Env, method: str, template: str, opts: dict[str, Any] | None = None) -> PromptLearner:
    """A learner around the shared frozen backbone; template-based learners get the dataset's template."""
    check_methods([method])
    opts = dict(opts or {})
    if method in _TEMPLATE_METHODS:
        opts.setdefault("template", template)
    return build_learner(method, env.backbone.model, env.backbone.tokenizer, **opts)


def check_classnames(learner: PromptLearner, classnames: Sequence[str], dataset: str) -> None:
    """Fail before any training when a class name does not fit the tokenizer's context length."""
    try:
        learner.tokenize(list(classnames))
    except ValueError as exc:
        raise ValueError(f"{dataset}: {exc}") from exc


def _template(env: Env, dataset: str) -> str:
    return template_for(env.templates, dataset)


@contextlib.contextmanager
def _template_of(learner: PromptLearner, template: str):
    """A template learner (zero-shot, VPT) evaluated on a dataset speaks that dataset's template
    (CoOp's convention, also for every transfer target); other learners have no template."""
    if not isinstance(learner, TemplateText):
        yield
        return
    old = learner.template
    learner.template = template
    try:
        yield
    finally:
        learner.template = old


# ------------------------------------------------------------------------------------------------
# one training unit


@dataclass
class Target:
    """A test set to report: (dataset name, split label, data, class names)."""

    dataset: str
    split: str
    data: list
    classnames: list[str]


def run_unit(env: Env, protocol: str, method: str, seed: int, shots: int, train_set: CoopDataset | None,
             targets: Sequence[Target], grad_transform: GradTransform | None = None, *,
             learner_name: str | None = None, learner_opts: dict[str, Any] | None = None,
             train: dict[str, Any] | None = None, policy: str = "none", lr_translation: str = "none",
             theta_init: dict[str, torch.Tensor] | None = None, init_seed: int | None = None,
             ckpt_dir: str | os.PathLike | None = None,
             on_final: Callable[[PromptLearner, dict[str, torch.Tensor]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``method`` on ``train_set`` (skipped for zero-shot) and evaluate it on every target.

    ``method`` is the row label; the learner is ``learner_name`` (default: ``method``) with
    ``learner_opts``. ``theta_init`` replaces the learner's initial θ (GRAM's θ*), ``init_seed`` seeds
    the random initialisation apart from the data ``seed`` (Figure 1a), ``train`` overrides the
    learner's TrainConfig, ``policy`` is the augmentation of the training inputs (``none`` | ``aug:N``),
    ``lr_translation`` scales its lrs to the backbone's temperature (gramlib.tuning.lr_translation.lr_factor),
    ``ckpt_dir`` checkpoints every epoch (and resumes); ``on_final(learner, θ)`` sees the final prompts
    (e.g. to measure their feature shift) before they are dropped.
    Returns tidy rows: one per target and evaluated epoch (zero-shot: epoch 0 only).
    """
    torch.manual_seed(seed if init_seed is None else init_seed)  # random prompt / meta-net initialisation
    src_name = train_set.name if train_set is not None else targets[0].dataset
    learner = make_learner(env, learner_name or method, _template(env, src_name), learner_opts)
    if theta_init is not None:
        learner.load_prompt_params({k: v.to(learner.device) for k, v in theta_init.items()})
    for t in targets:
        check_classnames(learner, t.classnames, t.dataset)
    evals = {}
    for t in targets:
        with _template_of(learner, _template(env, t.dataset)):
            evals[(t.dataset, t.split)] = eval_inputs(learner, env.backbone, t.data, t.classnames,
                                                      cache_dir=env.feature_cache)
    base = {"protocol": protocol, "method": method, "seed": seed, "shots": shots,
            "profile": env.profile.name, "git_commit": env.commit}

    def rows_at(theta: dict, epoch: int, runtime: float) -> list[dict[str, Any]]:
        out, texts = [], {}
        for (ds, split), data in evals.items():
            # one text pass per class list: ImageNet, -V2 and -Sketch share their 1,000 classes
            key = (tuple(data.classnames), id(data.text_features))
            if key not in texts:
                texts[key] = class_features(learner, theta, data, precision=env.backbone.precision)
            acc, folds = _scores(learner, theta, data, env.backbone.precision, texts[key])
            out.append({**base, "dataset": ds, "epoch": epoch, "split": split, "accuracy": 100.0 * acc,
                        "n_test": len(data), "runtime_s": runtime, **dict(zip(FOLD_COLUMNS, folds))})
        return out

    if not learner.prompt_params() or train_set is None:
        t0 = time.perf_counter()
        theta = learner.prompt_params()
        rows = rows_at(theta, 0, 0.0)
        for r in rows:
            r["runtime_s"] = time.perf_counter() - t0
        if on_final is not None:
            on_final(learner, theta)
        return rows

    check_classnames(learner, train_set.classnames, train_set.name)
    cfg = TrainConfig.for_learner(learner_name or method, seed=seed, **{"precision": env.backbone.precision, **(train or {})})
    cfg = translate_lr(cfg, lr_translation, float(learner.clip.logit_scale.exp()))
    data = train_inputs(learner, env.backbone, train_set.train, train_set.classnames, policy,
                        cache_dir=env.feature_cache, seed=seed)
    rows: list[dict[str, Any]] = []
    clock = {"since": time.perf_counter(), "train": 0.0}

    def eval_fn(lrn: PromptLearner, theta: dict, epoch: int) -> dict[str, float]:
        # runtime_s counts training only: the clock pauses while evaluating
        clock["train"] += time.perf_counter() - clock["since"]
        new_rows = rows_at(theta, epoch, clock["train"])
        rows.extend(new_rows)
        clock["since"] = time.perf_counter()
        return {f"acc/{r['dataset']}/{r['split']}": r["accuracy"] for r in new_rows}

    result = train_prompt(learner, data, cfg, grad_transform=grad_transform, eval_fn=eval_fn, ckpt_dir=ckpt_dir)
    if on_final is not None:
        on_final(learner, {k: v.detach() for k, v in result.theta.items()})
    return rows


def _scores(learner: PromptLearner, theta: dict, data: Any, precision: str, text: Any) -> tuple[float, list[float]]:
    """Top-1 accuracy (fraction, as :func:`gramlib.tuning.train.evaluate`) of θ on ``data``, and in percent on
    each class-stratified fold of its images (:mod:`gramlib.test_draw`: the test draw behind every interval)."""
    if len(data) == 0:
        return float("nan"), fold_accuracies([], [], len(data.classnames))
    hits = predict(learner, theta, data, precision=precision, text=text) == data.bank.labels
    labels = data.bank.labels.tolist()
    return float(hits.float().mean()), fold_accuracies(hits.cpu().numpy(), labels, len(data.classnames))


# ------------------------------------------------------------------------------------------------
# protocols


def fewshot_dataset(env: Env, name: str, shots: int, seed: int) -> CoopDataset:
    """K shots per class of dataset ``name`` for ``seed`` (cached as JSON beside the profile's artifacts)."""
    ds = load_dataset(env.coop_root, name)
    return fewshot_split(ds, shots, seed, cache_dir=env.fewshot_cache)


def unit_data(env: Env, protocol: str, dataset: str, shots: int, seed: int, *,
              train_split: bool = False) -> tuple[CoopDataset, list[Target]]:
    """The training set and test targets of one unit.

    ``base2new``: K shots per class sampled on *all* classes first, then the base/new split (CoCoOp's
    order); train on the base classes, test on the base and the new test sets (``train_split``: also
    on the K-shot training images themselves). ``transfer``: train on the source dataset (all classes)
    and test on the source, its shifted variants (cross-domain) and every other dataset
    (cross-dataset); :func:`label_transfer` splits the rows into the two views.
    """
    prof = env.profile
    if protocol == "base2new":
        fs = fewshot_dataset(env, dataset, shots, seed)
        base, new = subsample_dataset(fs, "base"), subsample_dataset(fs, "new")
        targets = [Target(dataset, "base", base.test, base.classnames), Target(dataset, "new", new.test, new.classnames)]
        if train_split:  # how far tuning fits its own K shots: overfitting needs room to fit
            targets.append(Target(dataset, "train", base.train, base.classnames))
        return base, targets
    if protocol != "transfer":
        raise ValueError(f"unknown protocol {protocol!r}; known: base2new, transfer")
    src = fewshot_dataset(env, prof.source, shots, seed)
    targets = [Target(prof.source, "test", src.test, src.classnames)]
    for name in [*prof.variants, *(d for d in prof.datasets if d != prof.source)]:
        ds = load_dataset(env.coop_root, name)
        targets.append(Target(name, "test", ds.test, ds.classnames))
    return src, targets


def label_transfer(rows: list[dict[str, Any]], profile: Profile) -> list[dict[str, Any]]:
    """Split a transfer unit's rows into the cross-domain and cross-dataset views (source in both)."""
    variants = set(profile.variants)
    out = []
    for r in rows:
        if r["dataset"] == profile.source:
            out += [{**r, "protocol": "cross_domain"}, {**r, "protocol": "cross_dataset"}]
        else:
            out.append({**r, "protocol": "cross_domain" if r["dataset"] in variants else "cross_dataset"})
    return out


def append_rows(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> Path:
    """Append tidy rows to a CSV atomically; an existing file with other columns raises."""
    path = Path(path)
    columns = list(columns)
    new = pd.DataFrame(list(rows), columns=columns)
    if path.exists() and path.stat().st_size > 0:
        old = pd.read_csv(path)
        if list(old.columns) != columns:
            raise ValueError(f"{path}: columns {list(old.columns)} differ from {columns}; write to a new file")
        new = pd.concat([old, new], ignore_index=True)
    with atomic_path(path) as tmp:
        new.to_csv(tmp, index=False, float_format="%.4f")
    return path


# ------------------------------------------------------------------------------------------------
# summaries (views of the rows)


# Tables are views of these rows: see gramlib.reporting.tables (base_to_new_table, transfer_table).

__all__ = ["COLUMNS", "Env", "Target", "append_rows", "check_classnames", "check_methods", "fewshot_dataset",
           "label_transfer", "load_env", "make_learner", "run_unit", "unit_data"]
