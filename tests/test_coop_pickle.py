"""CoOp's own few-shot pickles (issue 16, item 3's optional import): read without running foreign code,
matched to this machine's images, and used in place of our sampling when present.

The pickles are written here the way Dassl writes them: objects of a class named
``dassl.data.datasets.base_dataset.Datum`` (re-declared below from Dassl's source: ``_impath``, ``_label``,
``_domain``, ``_classname``), ``{"train": [...], "val": [...]}``, absolute paths of another machine.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sys
import types
from pathlib import Path

import pytest

from gramlib.data.coop import fewshot_split, load_dataset
from gramlib.data.coop_pickle import load_split_fewshot
from test_fewshot_dassl import _dassl_fewshot, _shuffled_split_fixture

ELSEWHERE = "/home/someone/coop/DATA/Shuffled/images"


@pytest.fixture
def dassl(monkeypatch):
    """A stand-in ``dassl.data.datasets.base_dataset`` module so that pickle can write Dassl's class name."""
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = mod.__name__, "Datum"
    mod.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return Datum


def _coop_picks(split_file: Path, seed: int, shots: int) -> dict[str, list]:
    obj = json.loads(split_file.read_text())
    random.seed(seed)
    return {"train": _dassl_fewshot(obj["train"], shots), "val": _dassl_fewshot(obj["val"], min(shots, 4))}


def _write_pickle(path: Path, picks: dict[str, list], Datum, protocol: int) -> None:
    obj = {k: [Datum(f"{ELSEWHERE}/{rel}", label, 0, cname) for rel, label, cname in v] for k, v in picks.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_coops_pickle_is_used_matched_to_our_images(tmp_path, dassl, protocol):
    ds_dir = _shuffled_split_fixture(tmp_path)
    picks = _coop_picks(ds_dir / "split_zhou_Shuffled.json", seed=99, shots=4)  # not what seed 1 draws here
    _write_pickle(ds_dir / "split_fewshot" / "shot_4-seed_1.pkl", picks, dassl, protocol)
    ds = load_dataset(tmp_path, "Shuffled")
    fs = fewshot_split(ds, 4, 1, cache_dir=tmp_path / "cache")
    image_dir = ds_dir / "images"
    for split in ("train", "val"):
        got = [(d.impath.relative_to(image_dir).as_posix(), d.label, d.classname) for d in getattr(fs, split)]
        assert got == [tuple(p) for p in picks[split]]
    assert fs.test == ds.test
    # without the pickle, Dassl's rule with seed 1 picks other images (so the pickle did decide)
    assert fewshot_split(ds, 4, 2).train != fs.train
    assert fewshot_split(ds, 16, 1).train != fs.train  # other (K, seed): no pickle, our sampling


def test_a_pickle_naming_any_other_global_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "split_fewshot" / "shot_1-seed_1.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"train": [Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match=r"shot_1-seed_1\.pkl.*refuses.*system"):
        load_split_fewshot(path)
    assert not marker.exists()


def test_a_pickled_image_we_do_not_have_or_a_relabelled_one_is_named(tmp_path, dassl):
    ds_dir = _shuffled_split_fixture(tmp_path)
    picks = _coop_picks(ds_dir / "split_zhou_Shuffled.json", seed=1, shots=4)
    path = ds_dir / "split_fewshot" / "shot_4-seed_1.pkl"
    missing = {"train": [["apple/nowhere.jpg", 0, "apple"]] + picks["train"][1:], "val": picks["val"]}
    _write_pickle(path, missing, dassl, pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match=r"shot_4-seed_1\.pkl: train\[0\].*apple/nowhere\.jpg.*names no image"):
        fewshot_split(load_dataset(tmp_path, "Shuffled"), 4, 1)
    rel, label, cname = picks["train"][0]
    relabelled = {"train": [[rel, (label + 1) % 7, cname]] + picks["train"][1:], "val": picks["val"]}
    _write_pickle(path, relabelled, dassl, pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match=r"train\[0\].*is label .* in the pickle but"):
        fewshot_split(load_dataset(tmp_path, "Shuffled"), 4, 1)
