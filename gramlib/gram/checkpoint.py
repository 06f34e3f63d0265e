"""Crash-safe checkpoints of GRAM meta-training (theta, phi, optimizers, step, RNG states).

A checkpoint is a directory holding two files:

* ``meta_state-step<N>-<token>.safetensors``: every tensor (theta, phi, optimizer buffers such as
  Adam's moments and step counters, the torch / CUDA RNG states);
* ``meta_state.json``: everything else (step, optimizer hyper-parameters, numpy and Python
  ``random`` RNG states, the MetaConfig for provenance, caller extras) plus the name and hash of
  the tensors file.

The JSON is written last and atomically, so it is the commit record: a run killed at any moment
leaves either the previous checkpoint or the new one, never a mix (stale tensors files are removed
after the commit).  Loading checks the hash, so a truncated or corrupt file gives a ValueError
naming that file instead of silently resuming from garbage.

Restoring all three global RNGs makes a resumed run bit-identical to an uninterrupted one on the
same machine (see tests/test_meta_checkpoint.py), provided the task sampler draws from them (or
stores its own generator state in ``extra``).
"""

from __future__ import annotations

import random
import secrets
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor

from gramlib.io import file_hash, load_safetensors, read_json, save_safetensors, write_json
from gramlib.gram.meta import MetaConfig, MetaState

FORMAT = "gram-meta-checkpoint"
VERSION = 1
JSON_NAME = "meta_state.json"
TENSORS_GLOB = "meta_state-*.safetensors"


def checkpoint_json(ckpt_dir: str | Path) -> Path:
    return Path(ckpt_dir) / JSON_NAME


def checkpoint_exists(ckpt_dir: str | Path) -> bool:
    """True once a checkpoint has been committed in ``ckpt_dir`` (its JSON record exists)."""
    return checkpoint_json(ckpt_dir).is_file()


# ----------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Put the torch (and CUDA) RNG states into ``tensors``; return numpy's and Python's as JSON."""
    tensors["rng/torch"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
            n_cuda += 1
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
        "cuda_devices": n_cuda,
    }


def restore_rng_state(tensors: Mapping[str, Tensor], rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    n_cuda = int(rng.get("cuda_devices", 0))
    if n_cuda and torch.cuda.is_available() and torch.cuda.device_count() == n_cuda:
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(n_cuda)])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------------------------
# optimizer state dicts <-> (tensors, JSON)


def _flatten_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    sd = opt.state_dict()
    state_json: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        out: dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, Tensor):
                key = f"{prefix}/{idx}/{name}"
                tensors[key] = value
                out[name] = {"__tensor__": key}
            else:
                out[name] = value
        state_json[str(idx)] = out
    return {"state": state_json, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(blob: Mapping[str, Any], tensors: Mapping[str, Tensor], where: Path) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in blob["state"].items():
        restored: dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, dict) and "__tensor__" in value:
                if value["__tensor__"] not in tensors:
                    raise ValueError(f"{where}: optimizer tensor {value['__tensor__']!r} is missing")
                restored[name] = tensors[value["__tensor__"]]
            else:
                restored[name] = value
        state[int(idx)] = restored
    groups = []
    for g in blob["param_groups"]:  # JSON turned tuples (Adam's betas) into lists
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------
# save / load


def save_meta_checkpoint(
    ckpt_dir: str | Path,
    state: MetaState,
    cfg: MetaConfig | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state`` (and the global RNG states) to ``ckpt_dir`` atomically; returns the JSON path.

    ``extra`` is any JSON-able mapping (e.g. a task sampler's generator state, the data hash); it is
    handed back by :func:`load_meta_checkpoint`.
    """
    ckpt_dir = Path(ckpt_dir)
    tensors: dict[str, Tensor] = {}
    for k, v in state.theta.items():
        tensors[f"theta/{k}"] = v
    for k, v in state.phi.items():
        tensors[f"phi/{k}"] = v
    optimizers: dict[str, Any] = {"theta": _flatten_optimizer(state.opt_theta, "opt/theta", tensors)}
    optimizers["phi"] = None if state.opt_phi is None else _flatten_optimizer(state.opt_phi, "opt/phi", tensors)
    rng = capture_rng_state(tensors)

    tensors_name = f"meta_state-step{state.step:08d}-{secrets.token_hex(4)}.safetensors"
    tensors_path = save_safetensors(ckpt_dir / tensors_name, tensors, metadata={"format": FORMAT, "step": str(state.step)})
    record = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(state.step),
        "tensors_file": tensors_name,
        "tensors_hash": file_hash(tensors_path),
        # lists, not mappings: the JSON writer sorts keys, and the order fixes the optimizer's param ids
        "theta": [[k, list(v.shape)] for k, v in state.theta.items()],
        "phi": [[k, list(v.shape)] for k, v in state.phi.items()],
        "optimizers": optimizers,
        "rng": rng,
        "config": None if cfg is None else cfg.to_dict(),
        "extra": dict(extra) if extra is not None else None,
    }
    json_path = write_json(checkpoint_json(ckpt_dir), record)  # the commit point
    for stale in ckpt_dir.glob(TENSORS_GLOB):
        if stale.name != tensors_name:
            stale.unlink(missing_ok=True)
    return json_path


class LoadedCheckpoint(NamedTuple):
    step: int
    config: dict[str, Any] | None  # the MetaConfig recorded at save time (as a dict)
    extra: dict[str, Any] | None


def _check_entries(kind: str, target: Mapping[str, Tensor], saved: list, where: Path) -> None:
    saved_shapes = {k: shape for k, shape in saved}
    if list(target) != [k for k, _ in saved]:
        raise ValueError(f"{where}: checkpoint {kind} entries {[k for k, _ in saved]} do not match the state's {list(target)}")
    for k, v in target.items():
        if list(v.shape) != list(saved_shapes[k]):
            raise ValueError(f"{where}: {kind}[{k!r}] has shape {saved_shapes[k]} in the checkpoint, {list(v.shape)} in the state")


def load_meta_checkpoint(ckpt_dir: str | Path, state: MetaState, *, restore_rng: bool = True) -> LoadedCheckpoint:
    """Load the checkpoint in ``ckpt_dir`` into ``state`` in place (theta, phi, optimizers, step).

    ``state`` must be built the same way as the saved one (same entries, shapes and optimizer
    kinds), e.g. by the same init function.  Optimizer hyper-parameters come from the checkpoint
    (PyTorch's load_state_dict semantics).  Any inconsistency raises a ValueError naming the file.
    """
    json_path = checkpoint_json(ckpt_dir)
    if not json_path.is_file():
        raise FileNotFoundError(f"no meta-training checkpoint in {Path(ckpt_dir)} ({json_path.name} missing)")
    record = read_json(json_path)  # ValueError naming the file if malformed or truncated
    try:
        if record.get("format") != FORMAT:
            raise ValueError(f"{json_path}: not a {FORMAT} record (format={record.get('format')!r})")
        if int(record["version"]) > VERSION:
            raise ValueError(f"{json_path}: checkpoint version {record['version']} is newer than this code ({VERSION})")
        tensors_path = Path(ckpt_dir) / record["tensors_file"]
        if not tensors_path.is_file():
            raise ValueError(f"{tensors_path}: tensors file named by {json_path.name} is missing")
        if file_hash(tensors_path) != record["tensors_hash"]:
            raise ValueError(f"{tensors_path}: content hash does not match {json_path.name} (corrupt or truncated)")
        tensors = load_safetensors(tensors_path)
        _check_entries("theta", state.theta, record["theta"], json_path)
        _check_entries("phi", state.phi, record["phi"], json_path)
        missing = [f"theta/{k}" for k in state.theta if f"theta/{k}" not in tensors]
        missing += [f"phi/{k}" for k in state.phi if f"phi/{k}" not in tensors]
        if missing:
            raise ValueError(f"{tensors_path}: missing tensors {missing}")
        opt_blobs = record["optimizers"]
        if (opt_blobs["phi"] is None) != (state.opt_phi is None):
            raise ValueError(f"{json_path}: phi optimizer present in checkpoint and state disagree")
        opt_theta_sd = _unflatten_optimizer(opt_blobs["theta"], tensors, tensors_path)
        opt_phi_sd = None if opt_blobs["phi"] is None else _unflatten_optimizer(opt_blobs["phi"], tensors, tensors_path)
        rng = record["rng"]
        step = int(record["step"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{json_path}: incomplete checkpoint record ({exc!r})") from exc

    with torch.no_grad():
        for k, v in state.theta.items():
            v.copy_(tensors[f"theta/{k}"])
        for k, v in state.phi.items():
            v.copy_(tensors[f"phi/{k}"])
    state.opt_theta.load_state_dict(opt_theta_sd)
    if state.opt_phi is not None and opt_phi_sd is not None:
        state.opt_phi.load_state_dict(opt_phi_sd)
    state.step = step
    if restore_rng:
        restore_rng_state(tensors, rng)
    return LoadedCheckpoint(step, record.get("config"), record.get("extra"))


class Resumed(NamedTuple):
    state: MetaState
    resumed: bool
    extra: dict[str, Any] | None


def resume_or_init(
    ckpt_dir: str | Path,
    init_fn: Callable[[], MetaState],
    cfg: MetaConfig | None = None,
    *,
    restore_rng: bool = True,
) -> Resumed:
    """Build a fresh state with ``init_fn``; if ``ckpt_dir`` holds a checkpoint, load it into that state.

    When ``cfg`` is given and differs from the recorded config a warning is issued (resuming with
    changed hyper-parameters is allowed but rarely intended).
    """
    state = init_fn()
    if not checkpoint_exists(ckpt_dir):
        return Resumed(state, False, None)
    loaded = load_meta_checkpoint(ckpt_dir, state, restore_rng=restore_rng)
    if cfg is not None and loaded.config is not None:
        now = _json_roundtrip(cfg.to_dict())
        if now != loaded.config:
            changed = sorted(k for k in set(now) | set(loaded.config) if now.get(k) != loaded.config.get(k))
            warnings.warn(f"resuming {checkpoint_json(ckpt_dir)} with a changed MetaConfig: {changed}", stacklevel=2)
    return Resumed(state, True, loaded.extra)


def _json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons with saved records."""
    import json

    from gramlib.io import json_default

    return json.loads(json.dumps(obj, default=json_default))


__all__ = [
    "LoadedCheckpoint",
    "Resumed",
    "capture_rng_state",
    "checkpoint_exists",
    "checkpoint_json",
    "load_meta_checkpoint",
    "restore_rng_state",
    "resume_or_init",
    "save_meta_checkpoint",
]
