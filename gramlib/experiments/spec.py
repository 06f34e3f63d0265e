"""What the experiments are: named methods (table rows), experiments (protocol x shots x methods x seeds)
and the tables' row lists, resolved from params.yaml's ``suite`` block for one profile.

Both the suite (which runs the experiments) and the meta-training runs (which the methods name) read
this, so it imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gramlib.config import drop_keys, load_params, merge_layers, section_layers, sub_layers, typed
from gramlib.gram.run_names import SEED_TAG, seeded_run

#: a run name ``<variant>_pretrain`` is the "w/o meta-learning" ablation of meta-training variant ``<variant>``
PRETRAIN_SUFFIX = "_pretrain"

SUITE_PROTOCOLS = ("base2new", "transfer")
#: how a meta method's runs meet the data seeds: "one" run for every seed, or data seed s tuned from run s
META_SEEDS = ("one", "paired")


@dataclass(frozen=True)
class MethodSpec:
    """How one table row is obtained: a plain learner, or a meta-training run's θ* and R^φ*."""

    name: str
    learner: str | None = None
    learner_opts: dict[str, Any] = field(default_factory=dict)
    meta: str | None = None
    init_seed: int | None = None
    # a meta method's two parts, each on or off (notebook 03's ablation at a glance):
    theta: str = "meta"  # "meta": start from θ*; "hand": the learner's own start ("a photo of a")
    regulator: str = "meta"  # "meta": R^φ* regulates the few-shot gradient (eq. 7); "identity": the raw gradient
    # "paired": data seed s tunes from the run repeated with task-sampler seed s (``<meta>@seed<s>``), so the
    # row's spread over seeds includes meta-training draws; "one": every seed from ``meta``; None: suite's
    meta_seeds: str | None = None

    def meta_run(self, seed: int) -> str | None:
        """The meta-training run that data seed ``seed`` of this row tunes from (None: a plain learner)."""
        if self.meta is None:
            return None
        return seeded_run(self.meta, seed) if self.meta_seeds == "paired" else self.meta

    def __post_init__(self) -> None:
        if self.meta_seeds is not None:
            if self.meta_seeds not in META_SEEDS:
                raise ValueError(f"method {self.name!r}: meta_seeds must be one of {META_SEEDS}, got {self.meta_seeds!r}")
            if self.meta is None and self.meta_seeds == "paired":
                raise ValueError(f"method {self.name!r}: meta_seeds pairs meta-training runs with data seeds ('meta' methods only)")
            if self.meta_seeds == "paired" and self.meta is not None and SEED_TAG in self.meta:
                raise ValueError(f"method {self.name!r}: meta {self.meta!r} names one seeded run; 'paired' needs the variant")
        if (self.learner is None) == (self.meta is None):
            raise ValueError(f"method {self.name!r}: give exactly one of 'learner' or 'meta'")
        if self.meta is not None and self.learner_opts:
            raise ValueError(f"method {self.name!r}: a meta method takes its learner config from the run")
        if self.theta not in ("meta", "hand") or self.regulator not in ("meta", "identity"):
            raise ValueError(f"method {self.name!r}: theta must be meta|hand and regulator meta|identity, "
                             f"got {self.theta!r}, {self.regulator!r}")
        if self.meta is None and (self.theta, self.regulator) != ("meta", "meta"):
            raise ValueError(f"method {self.name!r}: theta and regulator choose parts of a meta-training run ('meta')")


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
class ExperimentParams:
    """The keys of a ``suite.experiments.<name>`` block that :func:`suite_config` resolves into an
    :class:`Experiment`'s methods, seeds, shots, curves and datasets; its other keys are Experiment's own."""

    methods: tuple[str, ...]
    shots: int
    seeds: tuple[int, ...] | None = None  # None (or empty): the top-level ``seeds``
    follow_shots: bool = True  # false: --shots / -p shots does not move this experiment
    skip: tuple[str, ...] = ()  # methods left out (of ``methods`` and of the tables' rows)
    with_tables: tuple[str, ...] = ()  # tables (suite.tables) whose rows join ``methods``
    curves: tuple[str, ...] = ()  # those not run are dropped
    datasets: tuple[str, ...] | None = None  # None (or empty): the profile's


@dataclass(frozen=True)
class SuiteConfig:
    methods: dict[str, MethodSpec]
    experiments: dict[str, Experiment]
    train: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-learner TrainConfig overrides of this profile
    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table6/table7: rows in paper order
    # training inputs of every tuning run: "aug:N" = CoCoOp's random resized crop + flip as N views drawn
    # once (image features cached on disk), one view per image per epoch; "none" = the eval transform
    augment: str = "aug:10"
    # default of every meta method's ``meta_seeds`` ("one" | "paired", see MethodSpec)
    meta_seeds: str = "one"
    # every tuning lr (each learner's published one or suite.train's) as is ("none") or scaled to CLIP's
    # step size on this backbone ("temperature": x 100 / exp(logit_scale), gramlib.tuning.lr_translation.lr_factor)
    lr_translation: str = "none"

    def __post_init__(self) -> None:
        from gramlib.tuning.lr_translation import LR_TRANSLATIONS
        from gramlib.tuning.recipe import parse_policy

        if self.lr_translation not in LR_TRANSLATIONS:
            raise ValueError(f"suite.lr_translation must be one of {LR_TRANSLATIONS}, got {self.lr_translation!r}")
        if self.meta_seeds not in META_SEEDS:
            raise ValueError(f"suite.meta_seeds must be one of {META_SEEDS}, got {self.meta_seeds!r}")

        try:
            parse_policy(self.augment)
        except ValueError as exc:
            raise ValueError(f"suite.augment: {exc}") from None

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise ValueError(f"unknown experiment {name!r}; known: {', '.join(self.experiments)}")
        return self.experiments[name]


def suite_config(profile_name: str, params: dict | None = None, *, seeds: Sequence[int] | None = None,
                 shots: int | None = None) -> SuiteConfig:
    """params.yaml ``suite`` with the profile's overlay ``profiles.<profile>.suite`` deep-merged over it
    (strict); ``seeds``/``shots`` override every experiment that does not pin its own (the top-level
    ``seeds`` key by default)."""
    from gramlib.tuning.recipe import LEARNER_DEFAULTS, TrainConfig

    params = load_params() if params is None else params
    layers = section_layers("suite", profile_name, params)
    if not layers[0][1]:
        raise ValueError("params.yaml has no 'suite' block")
    merged = merge_layers(layers)
    methods = {}
    for n in merged.get("methods") or {}:
        (where, block), *over = sub_layers(layers, "methods", n)
        methods[n] = typed(MethodSpec, block, where, over=over, fixed={"name": n})
    (where, block), *over = drop_keys(layers, "methods", "experiments")
    cfg = typed(SuiteConfig, block, where, over=over, fixed={"methods": methods, "experiments": {}})
    cfg = dataclasses.replace(cfg, methods={  # a meta method without its own meta_seeds takes the suite's
        n: dataclasses.replace(m, meta_seeds=cfg.meta_seeds) if m.meta is not None and m.meta_seeds is None else m
        for n, m in methods.items()})
    for learner in cfg.train:  # per-learner TrainConfig overrides
        if learner not in LEARNER_DEFAULTS:
            raise ValueError(f"params.yaml: suite.train: unknown learner {learner!r}; "
                             f"known: {sorted(LEARNER_DEFAULTS)}")
        (where, block), *over = sub_layers(layers, "train", learner)
        typed(TrainConfig, block, where, over=over)
    for t, rows in cfg.tables.items():
        unknown = [m for m in rows if m not in methods]
        if unknown:
            raise ValueError(f"params.yaml: suite.tables.{t}: unknown methods {unknown}; define them in suite.methods")
    default_seeds = tuple(seeds if seeds is not None else params.get("seeds", (1, 2, 3)))
    own = {f.name for f in dataclasses.fields(ExperimentParams)}
    exps = {}
    for name in merged.get("experiments") or {}:
        exp_layers = sub_layers(layers, "experiments", name)
        (where, block), *over = [(w, {k: v for k, v in b.items() if k in own}) for w, b in exp_layers]
        e = typed(ExperimentParams, block, where, over=over)
        listed = list(e.methods)
        for t in e.with_tables:
            if t not in cfg.tables:
                raise ValueError(f"params.yaml: suite.experiments.{name}.with_tables: unknown table {t!r}; "
                                 f"known: {sorted(cfg.tables)}")
            listed += [m for m in cfg.tables[t] if m not in listed]
        ms = tuple(m for m in listed if m not in e.skip)
        unknown = [m for m in ms if m not in methods]
        if unknown:
            raise ValueError(f"params.yaml: suite.experiments.{name}: unknown methods {unknown}; "
                             "define them in suite.methods")
        (where, block), *over = drop_keys(exp_layers, *own)
        exps[name] = typed(Experiment, block, where, over=over, fixed={
            "name": name, "methods": ms, "seeds": e.seeds or default_seeds,
            "shots": int(shots if shots is not None and e.follow_shots else e.shots),
            "curves": tuple(c for c in e.curves if c in ms), "datasets": e.datasets or None})
    return dataclasses.replace(cfg, experiments=exps)


def experiment_runs(cfg: SuiteConfig, exp: Experiment) -> list[str]:
    """The meta-training runs an experiment's units tune from (each method at each seed), first use first."""
    names: list[str] = []
    for m in exp.methods:
        for seed in exp.seeds:
            run = cfg.methods[m].meta_run(seed)
            if run is not None and run not in names:
                names.append(run)
    return names


def required_runs(cfg: SuiteConfig) -> list[str]:
    """The meta-training runs the methods of the experiments use, in first-use order."""
    names: list[str] = []
    for exp in cfg.experiments.values():
        names += [r for r in experiment_runs(cfg, exp) if r not in names]
    return names
