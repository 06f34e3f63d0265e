"""The one crash-safe checkpoint mechanism of gramlib (pre-training, prompt tuning, meta-training).

Every training loop saves and resumes through this module, so there is one commit protocol to get
right and one place to test it (tests/test_checkpoint.py kills runs at random points, between the
files of one set included, and checks that the resumed run ends bit-identical).

Layout. A checkpoint called ``name`` in directory ``d`` is a *set* of files plus a commit record::

    d/<name>.json                                          the commit record
    d/<name>-step<00000042>-<token>.<part>.safetensors     one file per tensor group ("params", ...)

The random ``token`` is new on every save, so a save never writes over a file of the committed set.
The record holds the step, the kind of writer, the non-tensor state as JSON (optimizer
hyper-parameters, numpy/Python RNG states, histories...) and the name and sha256 of every file.

Commit protocol (:func:`save_checkpoint`):

1. each part is written to a new file (temporary file + ``os.replace``); its sha256 is taken from
   the bytes written;
2. the record is written with :func:`gramlib.io.write_json` (temporary file + ``os.replace``): this
   one rename is the commit;
3. only then every other file of ``name`` is deleted: older sets, and what saves killed before
   their commit left behind (half-written sets, stray temporary files).

A kill before the rename of step 2 leaves the old record naming the old, untouched files; a kill
after it leaves the new set complete. :func:`load_checkpoint` reads only the files the record
names, checks their hashes (a truncated, corrupt or missing file is a ValueError naming it, never a
silent resume from garbage) and parses them with safetensors (no pickle). Nothing is fsynced: the
protocol is about killed processes; after a power cut the worst case is that loud hash error.
One writer per checkpoint: two processes saving the same ``name`` in ``d`` would delete each other's
files.

The helpers below turn optimizers, LR schedulers and RNG states into (tensors, JSON) and back;
:func:`save_training_checkpoint` and :func:`restore_training_state` bundle them for a training loop.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from gramlib.io import atomic_path, json_default, read_json, write_json

FORMAT = "gramlib-checkpoint"
VERSION = 1
_PART = re.compile(r"^[A-Za-z0-9_]+$")

# Fault injection, for tests only: when set, called as ``fault_hook(event, path)`` at each point of a
# save where a kill matters. Events, in order: "tmp-written" (a part's bytes are in its temporary
# file, not yet renamed), "file-written" (one part in place), "before-commit", "after-commit" (record
# replaced, old sets not yet deleted), "file-removed" (one old file deleted), "after-cleanup".
fault_hook: Callable[[str, Path], None] | None = None


def _fault(event: str, path: Path) -> None:
    if fault_hook is not None:
        fault_hook(event, path)


def record_path(ckpt_dir: str | Path, name: str) -> Path:
    """The commit record of checkpoint ``name``: its existence is what 'a checkpoint exists' means."""
    return Path(ckpt_dir) / f"{name}.json"


def checkpoint_exists(ckpt_dir: str | Path, name: str) -> bool:
    return record_path(ckpt_dir, name).is_file()


def checkpoint_step(ckpt_dir: str | Path, name: str) -> int | None:
    """The committed step (reads the record only), or None when there is no checkpoint."""
    path = record_path(ckpt_dir, name)
    if not path.is_file():
        return None
    return int(_read_record(path)["step"])


def _set_files(ckpt_dir: Path, name: str) -> list[Path]:
    """Every file a save of ``name`` may have written (committed or not), temporary files included."""
    n = re.escape(name)
    own = re.compile(rf"^(?:{n}-step\d+-[0-9a-f]+\.\w+\.safetensors"  # part files
                     rf"|\.{n}-step\d+-[0-9a-f]+\.\w+\.safetensors\..+\.tmp"  # their temporary files
                     rf"|\.{n}\.json\..+\.tmp)$")  # the record's temporary files
    return [p for p in ckpt_dir.iterdir() if own.match(p.name)] if ckpt_dir.is_dir() else []


def save_checkpoint(ckpt_dir: str | Path, name: str, step: int, parts: Mapping[str, Mapping[str, Tensor]],
                    state: Mapping[str, Any], *, kind: str) -> Path:
    """Commit ``parts`` (tensor groups, one file each) and JSON ``state`` as step ``step``; returns the record.

    ``kind`` names the writer (e.g. "tuning"), so that one loop never resumes another's checkpoint.
    """
    from safetensors.torch import save

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    while any(ckpt_dir.glob(f"{name}-step{int(step):08d}-{token}.*")):  # never write over a committed file
        token = secrets.token_hex(4)
    files: dict[str, dict[str, str]] = {}
    for part, tensors in parts.items():
        if not _PART.match(part):
            raise ValueError(f"checkpoint part names are [A-Za-z0-9_]+, got {part!r}")
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                    metadata={"format": FORMAT, "kind": kind, "step": str(step), "part": part})
        path = ckpt_dir / f"{name}-step{int(step):08d}-{token}.{part}.safetensors"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
            _fault("tmp-written", tmp)
        _fault("file-written", path)
        files[part] = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    record = {"format": FORMAT, "version": VERSION, "kind": kind, "step": int(step), "files": files,
              "state": dict(state)}
    path = record_path(ckpt_dir, name)
    _fault("before-commit", path)
    write_json(path, record)  # the commit
    _fault("after-commit", path)
    keep = {f["file"] for f in files.values()}
    for stale in _set_files(ckpt_dir, name):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
            _fault("file-removed", stale)
    _fault("after-cleanup", path)
    return path


def remove_checkpoint(ckpt_dir: str | Path, name: str) -> None:
    """Delete checkpoint ``name``: the record first (un-commit), then its files."""
    record_path(ckpt_dir, name).unlink(missing_ok=True)
    for p in _set_files(Path(ckpt_dir), name):
        p.unlink(missing_ok=True)


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the record: error messages about the state name it
    kind: str
    step: int
    tensors: dict[str, dict[str, Tensor]]  # part -> tensors
    state: dict[str, Any]

    @property
    def extra(self) -> Any:
        """The caller's ``extra`` of :func:`save_training_checkpoint`."""
        return self.state.get("extra")


def _read_record(path: Path) -> dict[str, Any]:
    record = read_json(path)  # ValueError naming the file if malformed or truncated
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: not a {FORMAT} record (format={found!r})")
    if int(record.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: checkpoint version {record['version']} is newer than this code ({VERSION})")
    return record


def load_checkpoint(ckpt_dir: str | Path, name: str, *, kind: str | None = None) -> Checkpoint:
    """The committed set of ``name``, every file checked against the record's sha256."""
    from safetensors.torch import load

    path = record_path(ckpt_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {name!r} in {Path(ckpt_dir)} ({path.name} missing)")
    record = _read_record(path)
    try:
        if kind is not None and record["kind"] != kind:
            raise ValueError(f"{path}: a {kind!r} checkpoint was expected, found {record['kind']!r}")
        tensors: dict[str, dict[str, Tensor]] = {}
        for part, entry in record["files"].items():
            file = path.parent / entry["file"]
            if not file.is_file():
                raise ValueError(f"{file}: file of the checkpoint committed by {path.name} is missing")
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(f"{file}: content hash does not match {path.name} (corrupt or truncated)")
            try:
                tensors[part] = load(data)
            except Exception as exc:  # safetensors raises several types for corrupt headers
                raise ValueError(f"{file}: corrupt or unreadable safetensors file ({exc})") from exc
        return Checkpoint(path, record["kind"], int(record["step"]), tensors, dict(record["state"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: incomplete checkpoint record ({exc!r})") from exc


# ----------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Put the torch, CUDA, numpy and Python RNG states into ``tensors``; return their scalars as JSON.

    The 624-word Mersenne Twister states go to tensors (int64) so that the JSON record stays short.
    """
    tensors["rng/torch"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
            n_cuda += 1
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng/python"] = torch.tensor(internal, dtype=torch.int64)
    return {
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [version, gauss_next],
        "cuda_devices": n_cuda,
    }


def restore_rng_state(tensors: Mapping[str, Tensor], rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    n_cuda = int(rng.get("cuda_devices", 0))
    if n_cuda and torch.cuda.is_available() and torch.cuda.device_count() == n_cuda:
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(n_cuda)])
    name, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = rng["python"]
    random.setstate((version, tuple(int(x) for x in tensors["rng/python"].tolist()), gauss_next))


# ----------------------------------------------------------------------------------------------
# optimizer and LR scheduler state dicts <-> (tensors, JSON)


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Put the optimizer's buffers into ``tensors`` (keys ``prefix/<param id>/<slot>``); return the rest as JSON."""
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


def unflatten_optimizer(blob: Mapping[str, Any], tensors: Mapping[str, Tensor], where: Path) -> dict[str, Any]:
    """The state dict :func:`flatten_optimizer` took apart, for ``Optimizer.load_state_dict``."""
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


def scheduler_state(sched: Any) -> dict[str, Any]:
    """An LR scheduler's state dict as JSON (LambdaLR stores None for plain functions: they are code)."""
    try:
        return json.loads(json.dumps(sched.state_dict(), default=json_default))
    except TypeError as exc:
        raise ValueError(f"{type(sched).__name__}'s state dict is not JSON-serialisable ({exc})") from exc


def load_scheduler_state(sched: Any, blob: Mapping[str, Any]) -> None:
    sched.load_state_dict(copy.deepcopy(dict(blob)))  # LambdaLR pops from the dict it is given


# ----------------------------------------------------------------------------------------------
# a training loop's whole state as one set: "params", "optimizer" and "rng" parts


def save_training_checkpoint(
    ckpt_dir: str | Path, name: str, step: int, *, kind: str, params: Mapping[str, Tensor],
    optimizers: Mapping[str, torch.optim.Optimizer | None] | None = None,
    schedulers: Mapping[str, Any] | None = None, generators: Mapping[str, torch.Generator] | None = None,
    extra: Any = None,
) -> Path:
    """Commit a loop's parameters, optimizers, schedulers, RNGs (global + ``generators``) and ``extra``.

    ``params`` order matters (it fixes the optimizers' parameter ids) and is recorded; ``extra`` is
    any JSON the loop wants back (history, fingerprints, a sampler's state).
    """
    opt_t: dict[str, Tensor] = {}
    rng_t: dict[str, Tensor] = {}
    training = {
        "params": [[k, list(v.shape)] for k, v in params.items()],  # a list: the JSON writer sorts keys
        "optimizers": {n: None if o is None else flatten_optimizer(o, n, opt_t) for n, o in (optimizers or {}).items()},
        "schedulers": {n: scheduler_state(s) for n, s in (schedulers or {}).items()},
        "rng": capture_rng_state(rng_t),
    }
    for n, g in (generators or {}).items():
        rng_t[f"generator/{n}"] = g.get_state()
    parts = {"params": dict(params), "optimizer": opt_t, "rng": rng_t}
    return save_checkpoint(ckpt_dir, name, step, parts, {"training": training, "extra": extra}, kind=kind)


def restore_training_state(
    ck: Checkpoint, *, params: Mapping[str, Tensor],
    optimizers: Mapping[str, torch.optim.Optimizer | None] | None = None,
    schedulers: Mapping[str, Any] | None = None, generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> None:
    """Load a :func:`save_training_checkpoint` set into live objects, in place.

    Everything is checked (entries, order, shapes, which optimizers exist) before anything changes;
    a mismatch is a ValueError naming the record.
    """
    where = ck.path
    try:
        training = ck.state["training"]
        saved = [(k, list(s)) for k, s in training["params"]]
        if [k for k, _ in saved] != list(params):
            raise ValueError(f"{where}: checkpoint params {[k for k, _ in saved]} do not match the state's {list(params)}")
        for (k, shape), v in zip(saved, params.values()):
            if shape != list(v.shape):
                raise ValueError(f"{where}: param {k!r} has shape {shape} in the checkpoint, {list(v.shape)} in the state")
        missing = [k for k, _ in saved if k not in ck.tensors["params"]]
        if missing:
            raise ValueError(f"{where}: params part lacks tensors {missing}")
        opt_sds = {}
        for n, opt in (optimizers or {}).items():
            blob = training["optimizers"].get(n, False)
            if blob is False or (blob is None) != (opt is None):
                raise ValueError(f"{where}: optimizer {n!r} present in checkpoint and state disagree")
            if opt is not None:
                opt_sds[n] = unflatten_optimizer(blob, ck.tensors["optimizer"], where)
        scheds = {n: training["schedulers"][n] for n in (schedulers or {})}
        gens = {n: ck.tensors["rng"][f"generator/{n}"] for n in (generators or {})}
        rng = training["rng"]
        if restore_rng:
            missing = [k for k in ("rng/torch", "rng/numpy", "rng/python") if k not in ck.tensors["rng"]]
            if missing:
                raise ValueError(f"{where}: rng part lacks tensors {missing}")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: incomplete checkpoint record ({exc!r})") from exc

    with torch.no_grad():
        for k, v in params.items():
            v.copy_(ck.tensors["params"][k])
    for n, sd in opt_sds.items():
        optimizers[n].load_state_dict(sd)  # type: ignore[index, union-attr]
    for n, blob in scheds.items():
        load_scheduler_state(schedulers[n], blob)  # type: ignore[index]
    for n, state in gens.items():
        generators[n].set_state(state)  # type: ignore[index]
    if restore_rng:
        restore_rng_state(ck.tensors["rng"], rng)


__all__ = [
    "Checkpoint",
    "capture_rng_state",
    "checkpoint_exists",
    "checkpoint_step",
    "flatten_optimizer",
    "load_checkpoint",
    "load_scheduler_state",
    "record_path",
    "remove_checkpoint",
    "restore_rng_state",
    "restore_training_state",
    "save_checkpoint",
    "save_training_checkpoint",
    "scheduler_state",
    "unflatten_optimizer",
]
