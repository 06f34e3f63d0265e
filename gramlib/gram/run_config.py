"""What one meta-training run is: :class:`MetaTrainConfig` and its resolution from params.yaml.

A run is the ``meta`` section (with the profile's overlay) and one of its ``variants`` over it; the
ablations of Tables 6 and 7 are configuration (``tasks.domain_shift=False``, ``meta.regulate=False``,
``task_source="labelled"``, ``learner_cfg.n_ctx``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gramlib.config import Layer, drop_keys, load_params, merge_layers, section_layers, sub_layers, typed
from gramlib.gram.meta import MetaConfig
from gramlib.gram.run_names import split_run, with_seed
from gramlib.gram.tasks import TaskConfig

TASK_SOURCES = ("chc", "truth", "labelled")
THETA_INITS = ("random", "learner")
PAPER_N_CTX = 4  # §4.1: "the number of prompt tokens is set to 4"


def initial_learner_options(learner: str, learner_cfg: Mapping[str, Any], theta_init: str) -> dict[str, Any]:
    """The learner options that give meta-training its starting θ (Algorithm 1, line 1).

    ``"random"`` is Algorithm 1's "randomly initialise θ": a text context learner whose options do not
    name a ``ctx_init`` gets a random context of its own length (``n_ctx``, or the paper's 4 tokens
    where the learner would take the length from its hand-crafted phrase); learners without a text
    phrase (VPT) start random already.  ``"learner"`` keeps the learner's own start (CoOp's "a photo of
    a"), the documented alternative.  An explicit ``ctx_init`` in the options always wins.
    """
    if theta_init not in THETA_INITS:
        raise ValueError(f"meta.theta_init must be one of {THETA_INITS}, got {theta_init!r}")
    opts = dict(learner_cfg)
    if theta_init == "learner" or "ctx_init" in opts:
        return opts
    from gramlib.learners import learner_config

    cfg = learner_config(learner, **opts)
    if getattr(cfg, "ctx_init", None) is None:
        return opts
    return {**opts, "ctx_init": None, "n_ctx": cfg.n_ctx or PAPER_N_CTX}


@dataclass(frozen=True)
class MetaTrainConfig:
    """Everything one meta-training run depends on (written to ``config.json``)."""

    learner: str = "coop"  # coop (CoOp+GRAM) | vpt | vpt_deep | joint (UNIGRAM, 2+2)
    learner_cfg: dict[str, Any] = field(default_factory=dict)
    theta_init: str = "random"  # Algorithm 1: random θ | "learner": the learner's own start ("a photo of a")
    steps: int = 300  # outer iterations of Algorithm 1
    tasks: TaskConfig = field(default_factory=TaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    task_source: str = "chc"  # chc: artifacts/<profile>/chc/pairs.parquet | truth: mini ground truth | labelled
    labelled_dataset: str | None = None  # task_source=labelled: a CoOp-layout dataset (default: profile.source)
    pairs_path: str | None = None  # override of the CHC pairs table
    seed: int = 1
    # issue 15: a seeded fraction of the topic words never appears in meta-training; the regulator's
    # effect is measured on ``heldout_tasks`` tasks drawn from them (0: all topics train, as the paper)
    heldout_topics: float = 0.0
    heldout_tasks: int = 64
    ckpt_every: int = 50
    log_every: int = 1
    threads: int = 2

    def __post_init__(self) -> None:
        if self.theta_init not in THETA_INITS:
            raise ValueError(f"meta.theta_init must be one of {THETA_INITS}, got {self.theta_init!r}")
        if self.task_source not in TASK_SOURCES:
            raise ValueError(f"task_source must be one of {TASK_SOURCES}, got {self.task_source!r}")
        if self.steps < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("steps, ckpt_every and log_every must be >= 1")
        if not 0.0 <= self.heldout_topics < 1.0:
            raise ValueError(f"meta.heldout_topics must be in [0, 1), got {self.heldout_topics}")
        if self.heldout_tasks < 2:
            raise ValueError(f"meta.heldout_tasks must be >= 2 (a confidence interval needs two tasks), got {self.heldout_tasks}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "meta") -> MetaTrainConfig:
        """Strict (:func:`gramlib.config.typed`): nested ``tasks``/``meta`` blocks become their configs."""
        return typed(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def learner_options(self) -> dict[str, Any]:
        """The options meta-training builds its learner with (θ's start resolved, see
        :func:`initial_learner_options`); test time builds the same learner to load θ* into."""
        return initial_learner_options(self.learner, self.learner_cfg, self.theta_init)


def meta_layers(profile_name: str, variant: str | None = None, params: dict | None = None) -> list[Layer]:
    """The blocks a run of ``variant`` is merged from, most specific last: ``meta`` and the profile's
    overlay ``profiles.<profile>.meta`` (less their ``variants``), then ``meta.variants.<variant>`` and
    ``profiles.<profile>.meta.variants.<variant>`` (e.g. a cheaper image-side run on the mini profile).

    Every variant block of the section is checked here (strict, with its key path), whichever run is
    asked for; a profile's overlay may refine a variant but not add one.  ``pretrain`` blocks are
    :func:`gramlib.gram.pretrain_prompts.pretrain_config`'s to check.
    """
    layers = section_layers("meta", profile_name, load_params() if params is None else params)
    known = list(layers[0][1].get("variants") or {})  # file order: an error names a YAML anchor before its aliases
    for where, variants in sub_layers(layers, "variants"):
        unknown = sorted(set(variants) - set(known))
        if unknown:
            raise ValueError(f"params.yaml: {where}: unknown variant(s) {unknown}; known: {sorted(known)}")
    for name in known:  # each block on its own (class defaults fill in the rest): a typo fails with its key path
        for where, block in drop_keys(sub_layers(layers, "variants", name), "pretrain"):
            typed(MetaTrainConfig, block, where)
    if variant is not None and variant not in known:
        raise ValueError(f"unknown meta-training variant {variant!r}; known: {sorted(known)}")
    return drop_keys(layers, "variants") + (sub_layers(layers, "variants", variant) if variant is not None else [])


def meta_params(profile_name: str, variant: str | None = None, params: dict | None = None) -> dict:
    """The merge of :func:`meta_layers` as plain data (``pretrain`` included)."""
    return merge_layers(meta_layers(profile_name, variant, params))


def meta_train_config(profile_name: str, variant: str | None = None, params: dict | None = None) -> MetaTrainConfig:
    """The resolved run of ``variant`` (None: the section's base run; ``<variant>@seed<s>``: the variant with
    task-sampler seed s) on a profile; strict."""
    base, seed = split_run(variant) if variant is not None else (None, None)
    # meta.pretrain: the w/o-meta-learning ablation's own settings (gramlib.gram.pretrain_prompts.pretrain_config)
    (where, block), *over = drop_keys(meta_layers(profile_name, base, params), "pretrain")
    return with_seed(typed(MetaTrainConfig, block, where, over=over), variant, seed)
