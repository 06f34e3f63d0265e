"""Every meta-training run a profile's tables need, trained once and kept while nothing changes.

The suite's methods name their runs (``meta: coop_gram``, ``meta: unigram_no_regulator``, ...); a
name ending in ``_pretrain`` is the "w/o meta-learning" ablation of the variant before it (prompt
pre-training by classification, :mod:`gramlib.gram.pretrain_prompts`). This module collects the runs the
profile's experiments use, and trains each one whose *fingerprint* (its resolved configuration, the
code of the method, the backbone and the CHC pairs) differs from the one stored beside a finished
run. So a `dvc repro` after an edit retrains exactly the runs the edit touches, a killed stage resumes
from each run's checkpoint, and no finished run is mistaken for a current one.

Runs go through :mod:`gramlib.compute` (serially, or as Ray tasks of ``compute.meta_unit`` resources),
image-side runs first; each writes its own folder, so a retried run resumes from its checkpoint.

CLI: ``gramlib meta-train --profile mini [--backend ray]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gramlib.compute import ComputeConfig, compute_config, map_units
from gramlib.config import REPO, Profile, load_params
from gramlib.code_deps import code_hash
from gramlib.experiments.spec import PRETRAIN_SUFFIX, suite_config
from gramlib.experiments.spec import required_runs as spec_required_runs
from gramlib.io import read_json, write_json

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
# the code a run's result depends on: the import closure of the two trainers (comments count too)
RUN_MODULES = ("gramlib.gram.meta_train", "gramlib.gram.pretrain_prompts")


def required_runs(profile_name: str, params: dict | None = None) -> list[str]:
    """The meta runs used by the methods of the profile's experiments, in first-use order."""
    return spec_required_runs(suite_config(profile_name, load_params() if params is None else params))


def _sha(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            if f.exists():
                h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f.name).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_config(profile: Profile, name: str, params: dict | None = None) -> tuple[str, dict[str, Any]]:
    """("meta" | "pretrain", resolved configuration) of a run name."""
    from gramlib.gram.run_config import meta_train_config
    from gramlib.gram.pretrain_prompts import pretrain_config

    from gramlib.gram.run_names import split_run, with_seed

    params = load_params() if params is None else params
    base, seed = split_run(name)
    if base.endswith(PRETRAIN_SUFFIX):
        cfg = with_seed(pretrain_config(profile.name, base[: -len(PRETRAIN_SUFFIX)], params), name, seed)
        return "pretrain", dataclasses.asdict(cfg)
    return "meta", meta_train_config(profile.name, name, params).to_dict()


def fingerprint(profile: Profile, name: str, params: dict | None = None) -> dict[str, Any]:
    """What a run's result depends on: its configuration, the method's code and its inputs."""
    from gramlib.clip.pretrain import backbone_dir

    kind, cfg = run_config(profile, name, params)
    inputs = [profile.artifacts / "chc" / "pairs.parquet"]
    bdir = backbone_dir(profile)
    if bdir.exists():
        inputs += sorted(bdir.glob("*.safetensors"))
    return {"name": name, "kind": kind, "config": cfg, "code": code_hash(RUN_MODULES),
            "inputs": _sha(inputs), "profile": profile.name}


def is_current(profile: Profile, name: str, params: dict | None = None) -> bool:
    out = profile.artifacts / "meta" / name
    fp = out / FINGERPRINT
    return ((out / "theta_star.safetensors").exists() and fp.exists()
            and read_json(fp) == current_fingerprint(profile, name, params))


def current_fingerprint(profile: Profile, name: str, params: dict | None = None) -> dict[str, Any]:
    """The fingerprint as stored on disk (JSON types)."""
    return _jsonable(fingerprint(profile, name, params))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))


def train_run(profile: Profile, name: str, params: dict | None = None) -> dict[str, Any]:
    """Train one run (resuming its checkpoint when the fingerprint still matches) and stamp it."""
    from gramlib.gram.meta_train import meta_train
    from gramlib.gram.run_config import meta_train_config
    from gramlib.gram.pretrain_prompts import PretrainConfig, pretrain_prompts

    out = profile.artifacts / "meta" / name
    fp = current_fingerprint(profile, name, params)
    old = out / FINGERPRINT
    if out.exists() and (not old.exists() or read_json(old) != fp):
        # a stale or unstamped run (other config, code or inputs): its checkpoint must not be resumed
        partial = (out / "fingerprint.partial.json")
        if not (partial.exists() and read_json(partial) == fp):
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fingerprint.partial.json", fp)  # marks a started run, so a kill resumes it
    t0 = time.perf_counter()
    if fp["kind"] == "pretrain":
        summary = pretrain_prompts(profile, PretrainConfig.from_dict(fp["config"]), out)
    else:
        summary = meta_train(profile, meta_train_config(profile.name, name, params), out).summary
    write_json(out / FINGERPRINT, fp)
    (out / "fingerprint.partial.json").unlink(missing_ok=True)
    return {"name": name, "seconds": round(time.perf_counter() - t0, 1),
            **{k: summary.get(k) for k in ("train_s", "grad_cosine_start", "grad_cosine_end") if k in summary}}


def longest_first(profile: Profile, names: Sequence[str], params: dict | None = None) -> list[str]:
    """Image-side runs first (each costs several text-side runs), otherwise in the given order: the
    pool's last run is then a short one, not a long one started while the other worker idles."""
    from gramlib.learners import tunes_image_tower

    def image_side(name: str) -> bool:
        kind, cfg = run_config(profile, name, params)
        return kind == "meta" and tunes_image_tower(cfg["learner"])

    return sorted(names, key=lambda n: not image_side(n))


def _train_in_worker(job: tuple[Profile, str, dict | None]) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    return train_run(*job)


def ensure_runs(profile: Profile, names: Sequence[str] | None = None, compute: ComputeConfig | None = None,
                params: dict | None = None) -> list[dict[str, Any]]:
    """Train every run in ``names`` (default: the profile's required runs) that is not current.

    ``compute``: where the runs go (default: the profile's ``compute`` block); summaries in run order."""
    names = list(names) if names is not None else required_runs(profile.name, params)
    todo = [n for n in names if not is_current(profile, n, params)]
    log.info("meta runs: %d needed, %d to train: %s", len(names), len(todo), todo)
    if not todo:
        return []
    todo = longest_first(profile, todo, params)
    compute = compute if compute is not None else compute_config(profile.name, params)
    done: dict[str, dict[str, Any]] = {}
    map_units(_train_in_worker, [(profile, n, params) for n in todo], lambda job, s: done.__setitem__(job[1], s),
              compute, resources=compute.meta_unit)
    return [done[n] for n in todo]
