"""What the experiments are: named methods (table rows), experiments (protocol x shots x methods x seeds)
and the tables' row lists, resolved from params.yaml's ``suite`` block for one profile.

Both the suite (which runs the experiments) and the meta-training runs (which the methods name) read
this, so it imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gramlib.config import deep_merge, load_params

#: a run name ``<variant>_pretrain`` is the "w/o meta-learning" ablation of meta-training variant ``<variant>``
PRETRAIN_SUFFIX = "_pretrain"

SUITE_PROTOCOLS = ("base2new", "transfer")


@dataclass(frozen=True)
class MethodSpec:
    """How one table row is obtained: a plain learner, or a meta-training run's θ* and R^φ*."""

    name: str
    learner: str | None = None
    learner_opts: dict[str, Any] = field(default_factory=dict)
    meta: str | None = None
    init_seed: int | None = None

    def __post_init__(self) -> None:
        if (self.learner is None) == (self.meta is None):
            raise ValueError(f"method {self.name!r}: give exactly one of 'learner' or 'meta'")
        if self.meta is not None and self.learner_opts:
            raise ValueError(f"method {self.name!r}: a meta method takes its learner config from the run")

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> MethodSpec:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)} - {"name"}
        if unknown:
            raise ValueError(f"suite.methods.{name}: unknown keys {sorted(unknown)}")
        return cls(name=name, **dict(d))


@dataclass(frozen=True)
class Experiment:
    """One protocol at one shot count over named methods and seeds."""

    name: str
    protocol: str
    shots: int
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int | None = None  # None: the learner's recipe (10)
    eval_every: int | None = None  # None: the last epoch only
    curves: tuple[str, ...] = ()  # methods evaluated every epoch (Figure 3a)
    datasets: tuple[str, ...] | None = None  # base2new: default the profile's datasets
    feature_shift: bool = False  # measure each unit's final feature shift (RESTORE eq. 6) on the new split
    shift_images: int = 64  # images of the new split's test set that the measurement uses
    train_split: bool = False  # base2new: also evaluate the K-shot training images (split "train")

    def __post_init__(self) -> None:
        if self.protocol not in SUITE_PROTOCOLS:
            raise ValueError(f"experiment {self.name!r}: protocol must be one of {SUITE_PROTOCOLS}, got {self.protocol!r}")
        if self.shots < 1:
            raise ValueError(f"experiment {self.name!r}: shots must be >= 1, got {self.shots}")
        if not self.methods or not self.seeds:
            raise ValueError(f"experiment {self.name!r}: needs methods and seeds")
        missing = set(self.curves) - set(self.methods)
        if missing:
            raise ValueError(f"experiment {self.name!r}: curves for methods not run: {sorted(missing)}")
        if self.feature_shift and self.protocol != "base2new":
            raise ValueError(f"experiment {self.name!r}: feature_shift is measured on base2new's new split only")
        if self.shift_images < 1:
            raise ValueError(f"experiment {self.name!r}: shift_images must be >= 1, got {self.shift_images}")
        if self.train_split and self.protocol != "base2new":
            raise ValueError(f"experiment {self.name!r}: train_split evaluates base2new's base-class training images only")


@dataclass(frozen=True)
class SuiteConfig:
    methods: dict[str, MethodSpec]
    experiments: dict[str, Experiment]
    train: dict[str, dict[str, Any]]  # per-learner TrainConfig overrides of this profile
    workers: int = 2
    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table6/table7: rows in paper order

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise ValueError(f"unknown experiment {name!r}; known: {', '.join(self.experiments)}")
        return self.experiments[name]


def suite_config(profile_name: str, params: dict | None = None, *, seeds: Sequence[int] | None = None,
                 shots: int | None = None) -> SuiteConfig:
    """params.yaml ``suite`` merged with ``suite.profiles.<profile>``; ``seeds``/``shots`` override
    every experiment that does not pin its own (the top-level ``seeds`` key by default)."""
    params = load_params() if params is None else params
    block = dict(params.get("suite") or {})
    if not block:
        raise ValueError("params.yaml has no 'suite' block")
    block = deep_merge(block, (block.pop("profiles", {}) or {}).get(profile_name) or {})
    methods = {n: MethodSpec.from_dict(n, d or {}) for n, d in (block.get("methods") or {}).items()}
    default_seeds = tuple(seeds if seeds is not None else params.get("seeds", (1, 2, 3)))
    tables = {k: tuple(v) for k, v in (block.get("tables") or {}).items()}
    for t, rows in tables.items():
        unknown = [m for m in rows if m not in methods]
        if unknown:
            raise ValueError(f"suite.tables.{t}: unknown methods {unknown}; define them in suite.methods")
    exps = {}
    for name, d in (block.get("experiments") or {}).items():
        d = dict(d)
        skip = set(d.pop("skip", []) or [])
        listed = list(d.pop("methods"))
        for t in d.pop("with_tables", []) or []:
            if t not in tables:
                raise ValueError(f"suite.experiments.{name}.with_tables: unknown table {t!r}; known: {sorted(tables)}")
            listed += [m for m in tables[t] if m not in listed]
        ms = tuple(m for m in listed if m not in skip)
        unknown = [m for m in ms if m not in methods]
        if unknown:
            raise ValueError(f"suite.experiments.{name}: unknown methods {unknown}; define them in suite.methods")
        pinned = d.pop("seeds", None)
        follows = d.pop("follow_shots", True)  # false: --shots / -p shots does not move this experiment
        exp_shots = shots if shots is not None and follows else d.pop("shots")
        d.pop("shots", None)
        exps[name] = Experiment(name=name, methods=ms, seeds=tuple(pinned) if pinned else default_seeds,
                                shots=int(exp_shots), curves=tuple(c for c in d.pop("curves", []) if c in ms),
                                datasets=tuple(d.pop("datasets")) if d.get("datasets") else None,
                                **{k: v for k, v in d.items() if k != "datasets"})
    return SuiteConfig(methods, exps, dict(block.get("train") or {}), int(block.get("workers", 2)), tables)


def required_runs(cfg: SuiteConfig) -> list[str]:
    """The meta-training runs the methods of the experiments use, in first-use order."""
    names: list[str] = []
    for exp in cfg.experiments.values():
        for m in exp.methods:
            meta = cfg.methods[m].meta
            if meta is not None and meta not in names:
                names.append(meta)
    return names
