"""CoOp's cached few-shot selections (``<dataset>/split_fewshot/shot_<K>-seed_<s>.pkl``), read safely.

Why: a researcher who ran CoOp already has the exact images its published numbers were trained on, in
pickles written by Dassl (``{"train": [Datum, ...], "val": [...]}``; ImageNet's hold ``train`` only).
``pickle.load`` on a file from elsewhere runs whatever it names, so this reader resolves exactly one global,
Dassl's ``Datum`` (to a plain record), and refuses every other one before anything is built. The pickled
image paths are absolute on the machine that wrote them; each is matched to this machine's split by its
longest path suffix that names one of our images, and label and class name must agree with our loader.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

# the one class a Dassl few-shot pickle may name (dassl/data/datasets/base_dataset.py)
DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")


class _PickledDatum:
    """Receives a Dassl ``Datum``'s attributes (``_impath``, ``_label``, ``_domain``, ``_classname``)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: Any, source: str) -> None:
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == DASSL_DATUM:
            return _PickledDatum
        # protocols 0 and 1 rebuild objects through copyreg; harmless once the class itself is restricted
        if (module, name) in {("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")}:
            return _reconstruct
        if (module, name) in {("builtins", "object"), ("__builtin__", "object")}:
            return object
        raise pickle.UnpicklingError(f"{self.source}: refuses to load the global {module}.{name}: a CoOp few-shot "
                                     f"pickle holds only {'.'.join(DASSL_DATUM)} records")


def _reconstruct(cls: Any, base: Any, state: Any) -> Any:
    if cls is not _PickledDatum or base is not object or state is not None:
        raise pickle.UnpicklingError(f"unexpected object reconstruction {cls!r}({base!r}, {state!r})")
    return _PickledDatum()


def load_split_fewshot(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """The pickle's splits as ``{"train": [{"impath", "label", "classname"}, ...], ...}``."""
    path = Path(path)
    with open(path, "rb") as f:
        obj = _RestrictedUnpickler(io.BytesIO(f.read()), str(path)).load()
    if not isinstance(obj, dict) or "train" not in obj or not set(obj) <= {"train", "val"}:
        raise ValueError(f"{path}: expected a dict with keys train (and val), as CoOp writes; got "
                         f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    out: dict[str, list[dict[str, Any]]] = {}
    for split, items in obj.items():
        if not isinstance(items, list):
            raise ValueError(f"{path}: {split} must be a list of Dassl Datum records")
        recs = []
        for i, d in enumerate(items):
            state = getattr(d, "__dict__", None)
            if not isinstance(d, _PickledDatum) or not isinstance(state, dict):
                raise ValueError(f"{path}: {split}[{i}] is not a Dassl Datum")
            impath, label, classname = state.get("_impath"), state.get("_label"), state.get("_classname")
            if not isinstance(impath, str) or not isinstance(label, int) or not isinstance(classname, str):
                raise ValueError(f"{path}: {split}[{i}]: expected _impath (str), _label (int), _classname (str), "
                                 f"got {sorted(state)}")
            recs.append({"impath": impath, "label": label, "classname": classname})
        out[split] = recs
    return out


def match_items(records: Sequence[dict[str, Any]], ours: Sequence[Any], image_dir: Path, where: str) -> list[Any]:
    """Our ``gramlib.data.coop.Datum`` for each pickled record (this module does not import coop.py, which
    imports it): the longest suffix of the pickled path that is one of our image paths."""
    index: dict[tuple[str, ...], Any] = {}
    for d in ours:
        index[Path(d.impath).relative_to(image_dir).parts] = d
    depth = max((len(k) for k in index), default=0)
    out = []
    for i, r in enumerate(records):
        parts = tuple(p for p in r["impath"].replace("\\", "/").split("/") if p)
        hit = next((index[parts[-n:]] for n in range(min(depth, len(parts)), 0, -1) if parts[-n:] in index), None)
        if hit is None:
            raise ValueError(f"{where}[{i}]: {r['impath']!r} names no image of this split under {image_dir}")
        if hit.label != r["label"] or hit.classname != r["classname"]:
            raise ValueError(f"{where}[{i}]: {r['impath']!r} is label {r['label']} ({r['classname']!r}) in the pickle "
                             f"but {hit.label} ({hit.classname!r}) here: a different split or class-name rule")
        out.append(hit)
    return out


def split_fewshot_path(dataset_dir: str | os.PathLike, shots: int, seed: int) -> Path:
    """Where CoOp writes a selection: ``<dataset folder>/split_fewshot/shot_<K>-seed_<seed>.pkl``."""
    return Path(dataset_dir) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


__all__ = ["DASSL_DATUM", "load_split_fewshot", "match_items", "split_fewshot_path"]
