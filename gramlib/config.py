"""Profiles as data: ``params.yaml`` holds one block per profile (smoke, mini, paper).

Code never branches on a profile's *name*; it reads the block. Adding a profile is editing YAML.

Every block of params.yaml becomes a typed, frozen dataclass through one function, :func:`typed`
(dacite in strict mode): an unknown key or a value of the wrong type fails at once, naming its full
key path (``params.yaml: profiles.mini.backbone.lr: expected float, got str '1e-3'``).

One override mechanism: the sections ``chc``, ``meta`` and ``suite`` hold the defaults, and a
profile block ``profiles.<name>`` may hold overlays of the same names that are deep-merged over them
for that profile only (:func:`section_layers`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dacite
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
    # pre-training crops: each image cropped to a random area in [crop_min_area, 1] (random resized
    # crop, as CLIP's features are robust to the crops tuning applies); 1 = a shift of up to 2 pixels only
    crop_min_area: float = 1.0
    # where every model of the profile runs: auto = CUDA when present, else CPU; or cpu / cuda / cuda:N
    device: str = "auto"
    # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 (bf16 autocast is CUDA-only in tuning)
    precision: str = "auto"
    # a local weights file (.pt / .bin / .safetensors) instead of the Hugging Face cache route of `pretrained`
    checkpoint: str | None = None
    # None: what open_clip's pretrained config says for (arch, pretrained) (True for OpenAI's CLIP)
    quick_gelu: bool | None = None

    def __post_init__(self) -> None:
        if not 0 < self.crop_min_area <= 1:
            raise ValueError(f"backbone.crop_min_area: expected a fraction in (0, 1], got {self.crop_min_area!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"backbone.precision: expected auto, fp32 or bf16, got {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"backbone.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


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

    @property
    def root(self) -> Path:
        return (REPO / self.data_root) if not Path(self.data_root).is_absolute() else Path(self.data_root)

    @property
    def artifacts(self) -> Path:
        root = Path(self.artifacts_root)
        return (root if root.is_absolute() else REPO / root) / self.name


#: the sections with defaults at the top level of params.yaml that a profile block may overlay
#: (``profiles.<name>.chc`` is deep-merged over ``chc`` for that profile only, and so on)
OVERLAYS = ("chc", "meta", "suite", "probe", "compute")

#: (key path in params.yaml, block): one layer of a section, see :func:`section_layers`
Layer = tuple[str, Mapping]

T = TypeVar("T")


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``over`` merged into a copy of ``base``, recursively for nested blocks (profile/variant overrides)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class ParamsFile:
    """The top level of params.yaml; each section is typed by its resolver (``get_profile``, ``chc_config``,
    ``meta_train_config``, ``suite_config``), so here they stay mappings."""

    profile: str = "mini"
    reports: str = "reports"  # where the DVC pipeline writes reports: reports/ (mini), reports/<profile>/ (others)
    seeds: tuple[int, ...] = (1, 2, 3)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    chc: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    suite: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)  # where units run (gramlib.compute), not what they compute


def load_params(path: str | Path = PARAMS) -> dict:
    """params.yaml as plain data; its top-level keys are checked (an unknown one fails)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameters file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    typed(ParamsFile, params, source=path.name)
    return params


def get_profile(name: str | None = None, params: dict | None = None, path: str | Path = PARAMS,
                data_root: str | None = None, artifacts_root: str | None = None) -> Profile:
    """The named profile (default: ``params.yaml``'s ``profile``), with a clear error if unknown.

    ``data_root``/``artifacts_root`` relocate a profile (tests run the smoke chain in a temp dir);
    without them the environment variables ``GRAMLIB_DATA_ROOT``/``GRAMLIB_ARTIFACTS_ROOT`` do.
    The profile's overlays of the sections (``chc``, ``meta``, ``suite``) are read by those sections.
    """
    params = load_params(path) if params is None else params
    name = name or params.get("profile", "mini")
    block = {k: v for k, v in profile_block(name, params, path).items() if k not in OVERLAYS}
    # environment overrides reach every process of a run (CLI stages, Papermill kernels, workers)
    data_root = data_root or os.environ.get("GRAMLIB_DATA_ROOT") or None
    artifacts_root = artifacts_root or os.environ.get("GRAMLIB_ARTIFACTS_ROOT") or None
    if data_root:
        block["data_root"] = data_root
    if artifacts_root:
        block["artifacts_root"] = artifacts_root
    return typed(Profile, block, f"profiles.{name}", fixed={"name": name})


def profile_block(name: str, params: Mapping, path: str | Path = PARAMS) -> Mapping:
    """``profiles.<name>`` of params.yaml as written (its own keys and its section overlays)."""
    profiles = params.get("profiles") or {}
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r} (parameter 'profile' in {path}); known: {sorted(profiles)}")
    block = profiles[name] or {}
    if not isinstance(block, Mapping):
        raise ValueError(f"params.yaml: profiles.{name}: expected a mapping, got {_show(block)}")
    return block


# ----------------------------------------------------------------------------------------------
# sections and their profile overlays


def section_layers(section: str, profile_name: str, params: Mapping) -> list[Layer]:
    """The blocks that make up ``section`` (chc, meta or suite) for one profile, most specific last:
    ``[(section, params[section]), ("profiles.<profile>.<section>", the profile's overlay)]``.

    Their deep merge (:func:`merge_layers`) is the profile's view of the section; :func:`typed` takes
    the layers themselves, so that an error names the block that wrote the key.
    """
    if section not in OVERLAYS:
        raise ValueError(f"{section!r} is not a section with profile overlays ({', '.join(OVERLAYS)})")
    layers = [(section, params.get(section) or {}),
              (f"profiles.{profile_name}.{section}", profile_block(profile_name, params).get(section) or {})]
    for where, block in layers:
        if not isinstance(block, Mapping):
            raise ValueError(f"params.yaml: {where}: expected a mapping, got {_show(block)}")
    return layers


def sub_layers(layers: Sequence[Layer], *keys: str) -> list[Layer]:
    """The block at ``keys`` of each layer that has one (null counts as empty), e.g.
    ``sub_layers(layers, "experiments", "base2new")``; a block that is not a mapping is an error."""
    out = []
    for where, block in layers:
        node: Any = block
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                break
            node = node[k]
        else:
            where = _join(where, *keys)
            if node is not None and not isinstance(node, Mapping):
                raise ValueError(f"params.yaml: {where}: expected a mapping, got {_show(node)}")
            out.append((where, {} if node is None else node))
    return out


def drop_keys(layers: Sequence[Layer], *keys: str) -> list[Layer]:
    """The layers without the top-level ``keys`` (blocks that another config class reads)."""
    return [(where, {k: v for k, v in block.items() if k not in keys}) for where, block in layers]


def merge_layers(layers: Sequence[Layer]) -> dict:
    """The deep merge of the layers' blocks, most specific last (a fresh copy)."""
    out: dict = {}
    for _, block in layers:
        out = deep_merge(out, block)
    return out


# ----------------------------------------------------------------------------------------------
# plain data -> typed, frozen dataclasses (dacite, strict)


class _Misfit(Exception):
    """A key path (relative to the block being typed) and what is wrong there."""

    def __init__(self, path: tuple[str, ...], message: str, unknown: bool = False):
        super().__init__(message)
        self.path, self.message, self.unknown = path, message, unknown


def _number(value: Any) -> float:
    """A float field takes an int (YAML ``1``) but not a bool or a str (``"1e-3"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise dacite.WrongTypeError(field_type=float, value=value)
    return float(value)


def _integer(value: Any) -> Any:
    if isinstance(value, bool):
        raise dacite.WrongTypeError(field_type=int, value=value)
    return value


_STRICT = dacite.Config(strict=True, cast=[tuple], type_hooks={float: _number, int: _integer})


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """The init fields of a dataclass and their (resolved) types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _walk(tp: Any, data: Any, path: tuple[str, ...]) -> None:
    """What dacite does not report with a key path: an unknown key of a nested block; and a string or
    a mapping where a list belongs (a string would become a tuple of characters)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X
            _walk(arms[0], data, path)
        return
    if dataclasses.is_dataclass(tp):
        if isinstance(data, Mapping):
            fields = _fields(tp)
            for k in data:
                if k not in fields:
                    raise _Misfit(path + (str(k),), f"unknown key {k!r}", unknown=True)
            for k, v in data.items():
                _walk(fields[k], v, path + (k,))
        return
    args = typing.get_args(tp)
    if origin in (dict, Mapping) and isinstance(data, Mapping) and len(args) == 2:
        for k, v in data.items():
            _walk(args[1], v, path + (str(k),))
    elif origin in (list, tuple, Sequence):
        if isinstance(data, (str, bytes, Mapping)):
            raise _Misfit(path, f"expected {_type_name(tp)}, got {_show(data)}")
        if args and isinstance(data, (list, tuple)):
            for i, v in enumerate(data):
                _walk(args[0], v, path + (str(i),))


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    r = repr(value)
    return f"{type(value).__name__} {r if len(r) <= 80 else r[:77] + '...'}"


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _origin(layers: Sequence[Layer], path: tuple[str, ...]) -> str:
    """Key path of the last layer that holds ``path`` (the one whose value won the merge)."""
    for where, block in reversed(layers):
        node: Any = block
        for k in path:
            if isinstance(node, Mapping) and k in node:
                node = node[k]
            elif isinstance(node, (list, tuple)) and k.isdigit() and int(k) < len(node):
                node = node[int(k)]
            else:
                break
        else:
            return where
    return layers[0][0]


def typed(cls: type[T], data: Mapping | None, where: str = "", *, over: Sequence[Layer] = (),
          fixed: Mapping[str, Any] | None = None, source: str = "params.yaml") -> T:
    """``cls`` (a dataclass) built from ``data``, the block at key path ``where`` of ``source``, with the
    layers ``over`` ((where, block) pairs, most specific last) deep-merged over it; ``fixed`` fields
    are set by code, not by the file (a key of the same name in the file is unknown).

    Strict (dacite): an unknown key, a missing required key or a value of the wrong type raises a
    ValueError naming the key path of the block that wrote it, e.g. ``params.yaml:
    profiles.mini.backbone.lr: expected float, got str '1e-3'`` or ``params.yaml:
    suite.experiments.base2new: unknown key 'shotz'``.  An int is accepted where a float is declared
    (a bool or a str is not), a list where a tuple is.  The class's own ``__post_init__`` checks run
    as usual; their errors are prefixed with the block's key path.
    """
    def at(*parts: str) -> str:
        path = _join(*parts)
        return f"{source}: {path}" if path else source

    layers: list[Layer] = [(where, {} if data is None else data), *over]
    for w, block in layers:
        if not isinstance(block, Mapping):
            raise ValueError(f"{at(w)}: expected a mapping, got {_show(block)}")
    merged = merge_layers(layers)
    fixed = dict(fixed or {})
    try:
        for k in fixed:
            if k in merged:
                raise _Misfit((k,), f"unknown key {k!r}", unknown=True)
        _walk(cls, merged, ())
        return dacite.from_dict(cls, {**merged, **fixed}, _STRICT)
    except _Misfit as e:
        parent = e.path[:-1] if e.unknown else e.path
        raise ValueError(f"{at(_origin(layers, e.path), *parent)}: {e.message}") from None
    except dacite.WrongTypeError as e:  # incl. UnionMatchError
        path = tuple((e.field_path or "").split("."))
        raise ValueError(f"{at(_origin(layers, path), *path)}: expected {_type_name(e.field_type)}, "
                         f"got {_show(e.value)}") from None
    except dacite.MissingValueError as e:
        *parent, key = (e.field_path or "").split(".")
        raise ValueError(f"{at(where, *parent)}: missing key {key!r}") from None
    except (dacite.DaciteError, ValueError, TypeError) as e:  # the class's own checks
        blocks = [w for w, block in layers[1:] if block]
        raise ValueError(f"{at(where)}{' (with ' + ', '.join(blocks) + ')' if blocks else ''}: {e}") from e
