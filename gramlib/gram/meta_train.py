"""GRAM meta-training driver (Algorithm 1) and the test-time adapter (eq. 7).

``meta_train(profile, cfg, out_dir)`` builds theta from a prompt learner and phi from the
regulator, samples tasks (:mod:`gramlib.gram.tasks`) and runs :func:`gramlib.gram.meta.meta_step`:

* the task loss runs on what the learner allows to cache: CoOp sees CC3M image features computed
  once (the same cache entry as the CHC stage); VPT / UNIGRAM (joint) see image tensors that go
  through the prompted vision tower;
* the class text of a task is a row of a pre-tokenised table of all topic words, indexed by a
  tensor, so every task is a dict of equally shaped tensors and the meta-batch is vmapped;
  prompts are cut after the longest end-of-text token (causal mask: the features are unchanged,
  tested against the learner's own ``logits``);
* theta, phi, optimizers, the step and every RNG (the task sampler's included) are checkpointed
  atomically every ``ckpt_every`` steps; a killed run resumes bit-identically on CPU;
* per-step metrics, incl. ``grad_cosine`` (Figure 3b), go to ``meta_log.csv``; the end products are
  ``theta_star.safetensors``, ``phi_star.safetensors``, ``config.json`` and ``summary.json``.

Ablations (Table 6/7) are configuration: ``tasks.domain_shift=False``, ``meta.regulate=False``,
``task_source="labelled"`` (supervised meta-learning), ``learner_cfg.n_ctx`` (token sweep).
Named variants live in params.yaml's ``meta.variants``.

CLI::  python -m gramlib.gram.meta_train --profile mini --variant coop_gram [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from gramlib.config import REPO, Profile, deep_merge, get_profile, load_params
from gramlib.io import atomic_path, load_safetensors, read_json, save_safetensors, write_json
from gramlib.gram.meta import MetaConfig, MetaState, init_meta_state, meta_step, stack_tasks
from gramlib.gram.checkpoint import resume_or_init, save_meta_checkpoint
from gramlib.learners import build_learner
from gramlib.prompts import PromptLearner
from gramlib.prompts.base import TextTower, clip_logits, encode_text_embeddings
from gramlib.prompts.coop import TextContextLearner
from gramlib.gram.regulator import RegulatorConfig, init_regulator, regulate_gradient
from gramlib.gram.tasks import Task, TaskConfig, TaskPool, pool_from_dataset, pool_from_pairs, sample_tasks, truth_pairs

log = logging.getLogger(__name__)

TASK_SOURCES = ("chc", "truth", "labelled")
LOG_NAME = "meta_log.csv"


@dataclass(frozen=True)
class MetaTrainConfig:
    """Everything one meta-training run depends on (written to ``config.json``)."""

    learner: str = "coop"  # coop (CoOp+GRAM) | vpt | vpt_deep | joint (UNIGRAM, 2+2)
    learner_cfg: dict[str, Any] = field(default_factory=dict)
    steps: int = 300  # outer iterations of Algorithm 1
    tasks: TaskConfig = field(default_factory=TaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    task_source: str = "chc"  # chc: artifacts/<profile>/chc/pairs.parquet | truth: mini ground truth | labelled
    labelled_dataset: str | None = None  # task_source=labelled: a CoOp-layout dataset (default: profile.source)
    pairs_path: str | None = None  # override of the CHC pairs table
    seed: int = 1
    ckpt_every: int = 50
    log_every: int = 1
    threads: int = 2

    def __post_init__(self) -> None:
        if self.task_source not in TASK_SOURCES:
            raise ValueError(f"task_source must be one of {TASK_SOURCES}, got {self.task_source!r}")
        if self.steps < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("steps, ckpt_every and log_every must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaTrainConfig:
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown MetaTrainConfig keys: {sorted(unknown)}")
        if isinstance(d.get("tasks"), Mapping):
            d["tasks"] = TaskConfig.from_dict(d["tasks"])
        if isinstance(d.get("meta"), Mapping):
            d["meta"] = MetaConfig.from_dict(d["meta"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def meta_params(profile_name: str, variant: str | None = None, params: dict | None = None) -> dict:
    """params.yaml ``meta`` block, merged with ``meta.profiles.<profile>``, ``meta.variants.<variant>``,
    then ``meta.profiles.<profile>.variants.<variant>`` (most specific last)."""
    params = load_params() if params is None else params
    block = dict(params.get("meta") or {})
    profiles = block.pop("profiles", {}) or {}
    variants = block.pop("variants", {}) or {}
    prof_block = dict(profiles.get(profile_name) or {})
    prof_variants = prof_block.pop("variants", {}) or {}
    merged = deep_merge(block, prof_block)
    if variant is not None:
        if variant not in variants:
            raise ValueError(f"unknown meta-training variant {variant!r}; known: {sorted(variants)}")
        merged = deep_merge(merged, variants[variant] or {})
        # a profile's own settings for one variant (e.g. a cheaper image-side run on the mini profile)
        merged = deep_merge(merged, prof_variants.get(variant) or {})
    unknown = set(prof_variants) - set(variants)
    if unknown:
        raise ValueError(f"meta.profiles.{profile_name}.variants: unknown variant(s) {sorted(unknown)}")
    return merged


def meta_train_config(profile_name: str, variant: str | None = None, params: dict | None = None) -> MetaTrainConfig:
    block = meta_params(profile_name, variant, params)
    block.pop("pretrain", None)  # the w/o-meta-learning ablation's own settings (gramlib.gram.pretrain_prompts)
    return MetaTrainConfig.from_dict(block)


# ----------------------------------------------------------------------------------------------
# data: an item bank aligned with a task pool


@dataclass
class MetaData:
    """Items (features (N, D) or images (N, 3, H, W)) and the task pool whose positions index them."""

    bank: Tensor
    is_features: bool
    pool: TaskPool
    keys: list[str]
    source: str
    images: list[Any] | None = None  # PIL images (for plots), same order as the bank


def load_backbone(profile: Profile):
    from gramlib.clip.pretrain import load_profile_backbone

    return load_profile_backbone(profile)


def load_pairs(profile: Profile, cfg: MetaTrainConfig) -> pd.DataFrame:
    """The table tasks are drawn from: CHC's pairs (default) or the mini world's ground truth."""
    if cfg.task_source == "truth":
        path = profile.root / "cc3m_truth.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: task_source='truth' needs a generated (mini/smoke) world")
        return truth_pairs(pd.read_parquet(path))
    path = Path(cfg.pairs_path) if cfg.pairs_path else profile.artifacts / "chc" / "pairs.parquet"
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run the CHC stage of {profile.name!r} first "
                                "(or set meta.task_source: truth for the oracle topics)")
    return pd.read_parquet(path)


def _to_pixels(images: Sequence[Any], transform: Callable) -> Tensor:
    return torch.stack([transform(im) for im in images]) if len(images) else torch.zeros(0, 3, 1, 1)


def load_meta_data(profile: Profile, cfg: MetaTrainConfig, backbone: Any, features: bool,
                   cache_dir: str | os.PathLike | None = None, keep_images: bool = False) -> MetaData:
    """Bank + pool for ``cfg.task_source``; CC3M features share the CHC stage's cache entry."""
    from gramlib.clip.features import encode_images, eval_transform

    cache = Path(cache_dir) if cache_dir is not None else REPO / "cache" / "features"
    tf = eval_transform(backbone)
    if cfg.task_source == "labelled":
        from gramlib.data.coop import load_dataset
        from gramlib.data.transforms import load_image

        name = cfg.labelled_dataset or profile.source
        ds = load_dataset(profile.root / profile.coop_dir, name)
        data = ds.split("train")
        pool = pool_from_dataset(ds, cfg.tasks, "train")
        paths = [d.impath for d in data]
        if features:
            bank = encode_images(backbone, paths, tf, cache, desc=f"{name} features")
        else:
            bank = _to_pixels([load_image(p) for p in paths], tf)
        imgs = [load_image(p) for p in paths] if keep_images else None
        return MetaData(bank, features, pool, [str(p) for p in paths], f"labelled:{name}", imgs)

    from gramlib.data.corpus import corpus_identity, load_corpus_shared

    pairs = load_pairs(profile, cfg)
    corpus = load_corpus_shared(profile.root / profile.cc3m_dir)
    where = {k: i for i, k in enumerate(corpus.keys)}
    missing = [k for k in pairs["key"].astype(str) if k not in where]
    if missing:
        raise ValueError(f"{len(missing)} pair key(s) (e.g. {missing[:3]}) are not in the shards of {profile.name!r}")
    rows = torch.as_tensor([where[k] for k in pairs["key"].astype(str)], dtype=torch.long)
    pool = pool_from_pairs(pairs, cfg.tasks, source=f"{cfg.task_source} pairs of {profile.name}")
    if features:
        bank = encode_images(backbone, corpus.images, tf, cache, identity=corpus_identity(corpus),  # == CHC's entry
                             desc="CC3M features")[rows]
    else:
        bank = _to_pixels([corpus.images[i] for i in rows.tolist()], tf)
    imgs = [corpus.images[i] for i in rows.tolist()] if keep_images else None
    return MetaData(bank, features, pool, list(pairs["key"].astype(str)), cfg.task_source, imgs)


# ----------------------------------------------------------------------------------------------
# the task loss: a pure function of theta and a dict of tensors


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
            self.tower, self.tokens, self.n_ctx = tower, tokens, learner.plan.n_ctx
        elif learner.caches_text_features:
            self.text_table = learner.frozen_text_features(list(classnames)).detach()
        else:
            raise ValueError(f"{type(learner).__name__} is not supported by the meta-training loss "
                             "(needs a text context or cacheable text features)")

    def text_features(self, theta: Mapping[str, Tensor], cls: Tensor) -> Tensor:
        if not self.text_ctx:
            return self.text_table[cls]
        tokens = self.tokens[cls]  # (K, L)
        emb = self.tower.token_embedding(tokens)
        k = emb.shape[0]
        ctx = theta["ctx"].to(emb.dtype).unsqueeze(0).expand(k, -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        return F.normalize(encode_text_embeddings(self.tower, x, tokens), dim=-1)

    def logits(self, theta: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        img = batch["x"] if self.image_features else self.learner.encode_image(dict(theta), batch["x"])
        return clip_logits(self.learner.clip, img, self.text_features(theta, batch["cls"]))

    def __call__(self, theta: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(self.logits(theta, batch), batch["y"])


def task_batches(task: Task, bank: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(support, query) tensor dicts of one task, gathered from the item bank."""
    cls = torch.as_tensor(task.classes, dtype=torch.long)

    def part(idx: np.ndarray, y: np.ndarray) -> dict[str, Tensor]:
        return {"x": bank[torch.as_tensor(idx, dtype=torch.long)], "y": torch.as_tensor(y, dtype=torch.long), "cls": cls}

    return part(task.support_idx, task.support_y), part(task.query_idx, task.query_y)


def meta_batch(tasks: Sequence[Task], bank: Tensor, vectorize: bool) -> Any:
    pairs = [task_batches(t, bank) for t in tasks]
    return stack_tasks(pairs) if vectorize else pairs


# ----------------------------------------------------------------------------------------------
# the driver


@dataclass
class MetaTrainResult:
    theta: dict[str, Tensor]
    phi: dict[str, Tensor]
    log: pd.DataFrame
    summary: dict[str, Any]
    out_dir: Path


def build_meta_learner(profile: Profile, cfg: MetaTrainConfig, backbone: Any | None = None) -> tuple[Any, PromptLearner]:
    backbone = backbone if backbone is not None else load_backbone(profile)
    torch.manual_seed(cfg.seed)  # random prompt inits (VPT, ctx_init=None) come from the run's seed
    return backbone, build_learner(cfg.learner, backbone.model, backbone.tokenizer, **cfg.learner_cfg)


def _read_log(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    df = pd.read_csv(path)
    return df[df["step"] <= upto_step].to_dict("records")


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.9g")


def meta_train(profile: Profile | str, cfg: MetaTrainConfig, out_dir: str | os.PathLike, *,
               data: MetaData | None = None, backbone: Any | None = None,
               on_step: Callable[[int, dict[str, float]], None] | None = None,
               cache_dir: str | os.PathLike | None = None) -> MetaTrainResult:
    """Run Algorithm 1 for ``cfg.steps`` outer steps, resuming from ``out_dir/ckpt`` if present.

    ``on_step(step, metrics)`` is called after each step (tests use it to simulate a kill).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    out = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    t_setup = time.perf_counter()
    backbone, learner = build_meta_learner(prof, cfg, backbone)
    if data is None:
        data = load_meta_data(prof, cfg, backbone, features=learner.caches_image_features, cache_dir=cache_dir)
    loss_fn = TaskLoss(learner, data.pool.classnames, data.is_features)
    theta0 = {k: v.detach().clone() for k, v in learner.prompt_params().items()}
    phi0 = init_regulator(theta0, cfg.meta.regulator)
    if cfg.meta.meta_batch < 1:
        raise ValueError("meta.meta_batch must be >= 1")

    def init() -> MetaState:
        return init_meta_state(theta0, phi0, cfg.meta)

    ckpt = out / "ckpt"
    state, resumed, extra = resume_or_init(ckpt, init, cfg.meta)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    if resumed:
        if extra is None or "task_rng" not in extra:
            raise ValueError(f"{ckpt}: checkpoint has no task-sampler state; cannot resume bit-identically")
        rng.bit_generator.state = extra["task_rng"]
        rows = _read_log(out / LOG_NAME, state.step)
        log.info("resumed %s at step %d", ckpt, state.step)
    setup_s = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    start = state.step
    for step in range(state.step, cfg.steps):
        tasks = sample_tasks(data.pool, rng, cfg.meta.meta_batch)  # Alg. 1 line 3
        state, metrics = meta_step(state, meta_batch(tasks, data.bank, cfg.meta.vectorize), loss_fn, cfg.meta)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            rows.append({**metrics, "step": state.step})
        if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
            _write_log(out / LOG_NAME, rows)  # the log matches the checkpointed state
            save_meta_checkpoint(ckpt, state, cfg.meta, extra={"task_rng": rng.bit_generator.state,
                                                               "run": cfg.to_dict()})
        if on_step is not None:
            on_step(state.step, metrics)
    train_s = time.perf_counter() - t0
    theta = {k: v.detach().clone() for k, v in state.theta.items()}
    phi = {k: v.detach().clone() for k, v in state.phi.items()}
    save_safetensors(out / "theta_star.safetensors", theta, metadata={"learner": cfg.learner})
    save_safetensors(out / "phi_star.safetensors", phi, metadata={"kind": cfg.meta.regulator.kind})
    df = pd.DataFrame(rows)
    n_run = cfg.steps - start
    summary = {
        "profile": prof.name, "learner": cfg.learner, "steps": cfg.steps, "resumed_from": start if resumed else None,
        "setup_s": round(setup_s, 3), "train_s": round(train_s, 3),
        "steps_per_s": round(n_run / train_s, 3) if train_s > 0 and n_run else None,
        "n_classes": len(data.pool), "task_source": data.source, "skipped_classes": data.pool.skipped,
        "theta_shapes": {k: list(v.shape) for k, v in theta.items()}, "phi_params": int(sum(v.numel() for v in phi.values())),
        **curve_summary(df),
    }
    write_json(out / "config.json", {"run": cfg.to_dict(), "profile": prof.name})
    write_json(out / "summary.json", summary)
    return MetaTrainResult(theta, phi, df, summary, out)


def curve_summary(df: pd.DataFrame, frac: float = 0.1) -> dict[str, Any]:
    """Start/end means (first and last ``frac`` of the logged steps) of the Figure 3b curve and losses."""
    if df.empty:
        return {}
    n = max(1, int(math.ceil(len(df) * frac)))
    out: dict[str, Any] = {}
    for col in ("grad_cosine", "grad_cosine_raw", "meta_loss", "query_loss_before", "query_loss_after"):
        if col in df:
            out[f"{col}_start"] = float(df[col].iloc[:n].mean())
            out[f"{col}_end"] = float(df[col].iloc[-n:].mean())
    if "grad_cosine" in df:
        out["grad_cosine_rises"] = bool(out["grad_cosine_end"] > out["grad_cosine_start"])
    return out


# ----------------------------------------------------------------------------------------------
# results and test time (eq. 7)


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


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="GRAM meta-training (Algorithm 1)")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--variant", default="coop_gram")
    ap.add_argument("--out", default=None, help="default: artifacts/<profile>/meta/<variant>")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--task-source", default=None, choices=TASK_SOURCES)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    name = a.profile or load_params().get("profile", "mini")
    prof = get_profile(name)
    cfg = meta_train_config(name, a.variant)
    if a.steps is not None:
        cfg = dataclasses.replace(cfg, steps=a.steps)
    if a.task_source is not None:
        cfg = dataclasses.replace(cfg, task_source=a.task_source)
    out = Path(a.out) if a.out else prof.artifacts / "meta" / a.variant
    res = meta_train(prof, cfg, out)
    print({k: res.summary.get(k) for k in ("train_s", "steps_per_s", "grad_cosine_start", "grad_cosine_end",
                                           "meta_loss_start", "meta_loss_end")})


if __name__ == "__main__":
    main()
