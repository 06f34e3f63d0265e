"""The three evaluation protocols of GRAM's §4, writing tidy result rows.

* ``base2new``: few-shot sampling on all classes *first*, then the base/new split (CoCoOp); train on
  the base classes' K shots, test on the base and the new test sets. H = 2BN/(B+N) is computed on
  accuracies averaged over seeds (and over datasets for the average), never per seed.
* ``cross_domain``: train on the source dataset (all classes, K shots), test on the source and its
  shifted variants (ImageNet-V2/-Sketch/-A/-R or their mini counterparts).
* ``cross_dataset``: train on the source, test the learned prompt zero-shot on every other dataset.

One row per (protocol, dataset, method, seed, shots, epoch, split) with the columns of
:data:`COLUMNS`; ``accuracy`` is top-1 in percent, ``runtime_s`` the training time up to that epoch
(for zero-shot: the evaluation time). Rows are appended to a CSV; tables are views of those rows.

CLI::

    python -m gramlib.experiments.protocols --profile mini --protocol base2new --methods zeroshot,coop \\
        --seeds 1,2,3 --shots 16 --out results.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gramlib.clip.factory import Backbone
from gramlib.config import REPO, Profile, get_profile
from gramlib.data.coop import CoopDataset, fewshot_split, load_dataset, subsample_dataset
from gramlib.tuning.inputs import eval_inputs, parse_policy, train_inputs
from gramlib.io import atomic_path
from gramlib.learners import LEARNERS, build_learner
from gramlib.prompts import PromptLearner
from gramlib.tuning.train import GradTransform, TrainConfig, evaluate, train_prompt
from gramlib.clip.zeroshot import GENERIC_TEMPLATE, dataset_templates

log = logging.getLogger(__name__)

COLUMNS = ["protocol", "dataset", "method", "seed", "shots", "epoch", "split", "accuracy", "n_test",
           "runtime_s", "profile", "git_commit"]
PROTOCOLS = ("base2new", "cross_domain", "cross_dataset")
METHODS = tuple(LEARNERS)
# learners whose config has a hand-crafted template (their text side is the template)
_TEMPLATE_METHODS = {"zeroshot", "vpt", "vpt_deep"}


@dataclass(frozen=True)
class ProtocolConfig:
    """What to run. ``train`` overrides TrainConfig fields for every method (None: learner default);
    ``learner_opts[method]`` overrides that learner's config (e.g. ``{"coop": {"n_ctx": 16}}``)."""

    protocol: str = "base2new"
    methods: tuple[str, ...] = ("zeroshot", "coop")
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: tuple[int, ...] = (16,)
    datasets: tuple[str, ...] | None = None  # base2new: default the profile's datasets
    policy: str = "none"
    train: dict[str, Any] = field(default_factory=dict)
    learner_opts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ckpt_root: str | None = None

    def __post_init__(self) -> None:
        check_methods(self.methods)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if not self.seeds or not self.shots:
            raise ValueError("give at least one seed and one shot count")
        if any(k < 1 for k in self.shots):
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        parse_policy(self.policy)
        unknown = set(self.learner_opts) - set(self.methods)
        if unknown:
            raise ValueError(f"learner_opts for methods not run: {sorted(unknown)}")


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
    return Env(profile, backbone, dataset_templates(profile.root / profile.coop_dir),
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
    return env.templates.get(dataset, GENERIC_TEMPLATE)


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
             targets: Sequence[Target], pcfg: ProtocolConfig,
             grad_transform: GradTransform | None = None, *, learner_name: str | None = None,
             theta_init: dict[str, torch.Tensor] | None = None, init_seed: int | None = None,
             train_overrides: dict[str, Any] | None = None,
             on_final: Callable[[PromptLearner, dict[str, torch.Tensor]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``method`` on ``train_set`` (skipped for zero-shot) and evaluate it on every target.

    ``method`` is the row label; the learner is ``learner_name`` (default: ``method``) with
    ``pcfg.learner_opts[method]``. ``theta_init`` replaces the learner's initial θ (GRAM's θ*),
    ``init_seed`` seeds the random initialisation apart from the data ``seed`` (Figure 1a), and
    ``train_overrides`` update the TrainConfig after ``pcfg.train``; ``on_final(learner, θ)`` sees the
    final prompts (e.g. to measure their feature shift) before they are dropped.
    Returns tidy rows: one per target and evaluated epoch (zero-shot: epoch 0 only).
    """
    torch.manual_seed(seed if init_seed is None else init_seed)  # random prompt / meta-net initialisation
    src_name = train_set.name if train_set is not None else targets[0].dataset
    learner = make_learner(env, learner_name or method, _template(env, src_name),
                           pcfg.learner_opts.get(learner_name or method))
    if theta_init is not None:
        learner.load_prompt_params({k: v.to(learner.device) for k, v in theta_init.items()})
    for t in targets:
        check_classnames(learner, t.classnames, t.dataset)
    evals = {(t.dataset, t.split): eval_inputs(learner, env.backbone, t.data, t.classnames,
                                               cache_dir=env.feature_cache) for t in targets}
    base = {"protocol": protocol, "method": method, "seed": seed, "shots": shots,
            "profile": env.profile.name, "git_commit": env.commit}

    def rows_at(theta: dict, epoch: int, runtime: float) -> list[dict[str, Any]]:
        out = []
        for (ds, split), data in evals.items():
            acc = evaluate(learner, theta, data)
            out.append({**base, "dataset": ds, "epoch": epoch, "split": split, "accuracy": 100.0 * acc,
                        "n_test": len(data), "runtime_s": runtime})
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
    cfg = TrainConfig.for_learner(learner_name or method, seed=seed, **{**pcfg.train, **(train_overrides or {})})
    data = train_inputs(learner, env.backbone, train_set.train, train_set.classnames, pcfg.policy,
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

    ckpt = None
    if pcfg.ckpt_root:
        ckpt = Path(pcfg.ckpt_root) / protocol / train_set.name / method / f"shots{shots}_seed{seed}"
    result = train_prompt(learner, data, cfg, grad_transform=grad_transform, eval_fn=eval_fn, ckpt_dir=ckpt)
    if on_final is not None:
        on_final(learner, {k: v.detach() for k, v in result.theta.items()})
    return rows


# ------------------------------------------------------------------------------------------------
# protocols


def fewshot_dataset(env: Env, name: str, shots: int, seed: int) -> CoopDataset:
    ds = load_dataset(env.coop_root, name)
    return fewshot_split(ds, shots, seed, cache_dir=env.fewshot_cache)


def units(env: Env, pcfg: ProtocolConfig) -> Iterator[tuple[str, int, int, CoopDataset | None, list[Target]]]:
    """(method, seed, shots, train set, targets) for every training unit of the protocol."""
    prof = env.profile
    for shots in pcfg.shots:
        for seed in pcfg.seeds:
            if pcfg.protocol == "base2new":
                for name in (pcfg.datasets or prof.datasets):
                    fs = fewshot_dataset(env, name, shots, seed)  # few-shot sampling BEFORE the split
                    base, new = subsample_dataset(fs, "base"), subsample_dataset(fs, "new")
                    targets = [Target(name, "base", base.test, base.classnames),
                               Target(name, "new", new.test, new.classnames)]
                    for m in pcfg.methods:
                        yield m, seed, shots, base, targets
            else:
                src = fewshot_dataset(env, prof.source, shots, seed)
                others = (prof.variants if pcfg.protocol == "cross_domain"
                          else [d for d in (pcfg.datasets or prof.datasets) if d != prof.source])
                targets = [Target(prof.source, "test", src.test, src.classnames)]
                for name in others:
                    ds = load_dataset(env.coop_root, name)
                    targets.append(Target(name, "test", ds.test, ds.classnames))
                for m in pcfg.methods:
                    yield m, seed, shots, src, targets


def run_protocol(env: Env, pcfg: ProtocolConfig, out: str | os.PathLike | None = None,
                 grad_transform: GradTransform | None = None,
                 progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run every unit; rows are appended to ``out`` after each unit (a crash loses one unit at most)."""
    all_rows = []
    for method, seed, shots, train_set, targets in units(env, pcfg):
        t0 = time.perf_counter()
        rows = run_unit(env, pcfg.protocol, method, seed, shots, train_set, targets, pcfg, grad_transform)
        if out is not None:
            append_rows(out, rows)
        all_rows.extend(rows)
        if progress:
            last = max(r["epoch"] for r in rows)
            accs = ", ".join(f"{r['dataset']}/{r['split']}={r['accuracy']:.1f}" for r in rows if r["epoch"] == last)
            progress(f"{pcfg.protocol} {method} seed={seed} shots={shots} epoch={last} "
                     f"({time.perf_counter() - t0:.1f}s): {accs}")
    return pd.DataFrame(all_rows, columns=COLUMNS)


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


# ------------------------------------------------------------------------------------------------
# CLI


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from exc


def _opts(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``coop.n_ctx=16`` -> {"coop": {"n_ctx": 16}} (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, opt = key.partition(".")
        if not sep or not dot:
            raise argparse.ArgumentTypeError(f"learner option must look like method.option=value, got {item!r}")
        out.setdefault(method, {})[opt] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gramlib.experiments.protocols", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--protocol", default="base2new", choices=PROTOCOLS)
    ap.add_argument("--methods", default="zeroshot,coop")
    ap.add_argument("--seeds", type=_ints, default=(1, 2, 3))
    ap.add_argument("--shots", type=_ints, default=(16,))
    ap.add_argument("--datasets", default=None, help="comma-separated (default: the profile's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None, help="evaluate every k epochs (default: every epoch)")
    ap.add_argument("--policy", default="none", help="augmentation policy: none | aug:N")
    ap.add_argument("--opt", action="append", default=[], help="learner option, e.g. coop.n_ctx=16")
    ap.add_argument("--ckpt-root", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: tiny ops are latency-bound, 2 threads on a busy 2-core box are ~20x slower)")
    ap.add_argument("--artifacts-root", default=None, help="override the profile's artifacts root (backbone, caches)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                   "eval_every": args.eval_every}.items() if v is not None}
        pcfg = ProtocolConfig(args.protocol, tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                              args.seeds, args.shots,
                              tuple(args.datasets.split(",")) if args.datasets else None, args.policy, train,
                              _opts(args.opt), args.ckpt_root)
        prof = get_profile(args.profile)
        if args.artifacts_root:
            prof = dataclasses.replace(prof, artifacts_root=args.artifacts_root)
        env = load_env(prof)
        df = run_protocol(env, pcfg, args.out, progress=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.protocol == "base2new":
        from gramlib.reporting.tables import base_to_new_table

        print(base_to_new_table(df).to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["COLUMNS", "Env", "METHODS", "PROTOCOLS", "ProtocolConfig", "Target", "append_rows",
           "check_classnames", "check_methods", "load_env", "make_learner", "run_protocol",
           "run_unit", "units"]
