"""Profiles as data: ``params.yaml`` holds one block per profile (smoke, mini, paper).

Code never branches on a profile's *name*; it reads the block. Adding a profile is editing YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


@dataclass(frozen=True)
class WorldConfig:
    """How big a mini world to generate (absent for the paper profile)."""

    seed: int = 0
    image_size: int = 32
    n_web: int = 40000
    n_cc3m: int = 15000
    shard_size: int = 1000
    concepts_per_family: int | None = None
    split_scale: float = 1.0
    web_clutter_p: float = 0.2
    workers: int = 2
    spec: str = "data/spec/miniworld.yaml"


@dataclass(frozen=True)
class BackboneConfig:
    """Which CLIP to build and, for the tiny one, how to pre-train it (fixed step count)."""

    arch: str = "tiny-clip-conv"
    pretrained: str | None = None  # "openai" for the paper profile
    steps: int = 1200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    threads: int = 2
    precision: str = "fp32"


@dataclass(frozen=True)
class Profile:
    name: str
    data_root: str
    backbone: BackboneConfig
    world: WorldConfig | None = None
    datasets: tuple[str, ...] = ()
    source: str = "mini_imagenet"
    variants: tuple[str, ...] = ()
    cc3m_dir: str = "cc3m"
    coop_dir: str = "coop"
    artifacts_root: str = "artifacts"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return (REPO / self.data_root) if not Path(self.data_root).is_absolute() else Path(self.data_root)

    @property
    def artifacts(self) -> Path:
        root = Path(self.artifacts_root)
        return (root if root.is_absolute() else REPO / root) / self.name


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``over`` merged into a copy of ``base``, recursively for nested blocks (profile/variant overrides)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def load_params(path: str | Path = PARAMS) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameters file not found: {path}")
    return yaml.safe_load(path.read_text()) or {}


def get_profile(name: str | None = None, params: dict | None = None, path: str | Path = PARAMS,
                data_root: str | None = None, artifacts_root: str | None = None) -> Profile:
    """The named profile (default: ``params.yaml``'s ``profile``), with a clear error if unknown.

    ``data_root``/``artifacts_root`` relocate a profile (tests run the smoke chain in a temp dir);
    without them the environment variables ``GRAMLIB_DATA_ROOT``/``GRAMLIB_ARTIFACTS_ROOT`` do.
    """
    params = load_params(path) if params is None else params
    name = name or params.get("profile", "mini")
    profiles = params.get("profiles", {})
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r} (parameter 'profile' in {path}); known: {sorted(profiles)}")
    block = dict(profiles[name])
    # environment overrides reach every process of a run (CLI stages, Papermill kernels, workers)
    data_root = data_root or os.environ.get("GRAMLIB_DATA_ROOT") or None
    artifacts_root = artifacts_root or os.environ.get("GRAMLIB_ARTIFACTS_ROOT") or None
    if data_root:
        block["data_root"] = data_root
    if artifacts_root:
        block["artifacts_root"] = artifacts_root
    try:
        backbone = _build(BackboneConfig, block.pop("backbone", {}), f"profiles.{name}.backbone")
        world_block = block.pop("world", None)
        world = _build(WorldConfig, world_block, f"profiles.{name}.world") if world_block is not None else None
        known = {f.name for f in dataclasses.fields(Profile)} - {"name", "backbone", "world", "extra"}
        if "artifacts" in block:
            raise ValueError("use 'artifacts_root', not 'artifacts'")
        extra = {k: block.pop(k) for k in list(block) if k not in known}
        for key in ("datasets", "variants"):
            if key in block:
                block[key] = tuple(block[key])
        return Profile(name=name, backbone=backbone, world=world, extra=extra, **block)
    except TypeError as exc:
        raise ValueError(f"{path}: profiles.{name}: {exc}") from exc


def _build(cls: type, block: dict | None, where: str):
    block = dict(block or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(block) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**block)
