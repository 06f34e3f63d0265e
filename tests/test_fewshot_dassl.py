"""CoOp's exact shots (issue 16): the project's few-shot picks equal an independent re-implementation
of Dassl's documented sampling, on fixtures whose split lists are *not* sorted by label.

The reference below is written from Dassl's ``DatasetBase.generate_fewshot_dataset`` /
``split_dataset_by_label`` and CoOp's dataset files, not from gramlib: Python's global ``random`` is
seeded once with the seed (Dassl's ``set_random_seed``), train is sampled first and val (``min(K, 4)``)
continues the same stream, classes are visited in the order a ``defaultdict`` fills (first appearance),
a class with fewer than K items is kept whole; ImageNet has no few-shot val and lists its images in the
file system's order inside sorted class folders.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

import pytest

from fixtures import write_image
from gramlib.data.coop import FEWSHOT_RULE, fewshot_split, load_dataset

CLASSES = ["apple", "bus", "cat", "dog", "eel", "fox", "gnu"]


def _dassl_fewshot(items: list, num_shots: int) -> list:
    tracker = defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    out = []
    for _label, group in tracker.items():
        out.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


def _reference_split_zhou(split_file: Path, seed: int, shots: int) -> tuple[list, list]:
    obj = json.loads(split_file.read_text())
    random.seed(seed)
    train = _dassl_fewshot(obj["train"], shots)
    val = _dassl_fewshot(obj["val"], min(shots, 4))
    return [(i[0], i[1]) for i in train], [(i[0], i[1]) for i in val]


def _shuffled_split_fixture(root: Path) -> Path:
    """A split_zhou dataset whose train/val lists interleave classes in a random order; one class is
    short (3 training images) so truncation is exercised at 4 and 16 shots."""
    rng = random.Random(123)
    ds = root / "Shuffled"
    splits = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(CLASSES):
        counts = {"train": 3 if cname == "eel" else 20 + label, "val": 6, "test": 2}
        for split, n in counts.items():
            for i in range(n):
                rel = f"{cname}/{split}_{i:03d}.jpg"
                write_image(ds / "images" / rel)
                splits[split].append([rel, label, cname])
    for split in splits:
        rng.shuffle(splits[split])
    assert [i[1] for i in splits["train"]] != sorted(i[1] for i in splits["train"])
    (ds / "split_zhou_Shuffled.json").write_text(json.dumps(splits))
    return ds


@pytest.mark.parametrize("shots", [16, 4, 1])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_split_zhou_picks_equal_dassls(tmp_path, seed, shots):
    ds_dir = _shuffled_split_fixture(tmp_path)
    ref_train, ref_val = _reference_split_zhou(ds_dir / "split_zhou_Shuffled.json", seed, shots)
    fs = fewshot_split(load_dataset(tmp_path, "Shuffled"), shots, seed)
    image_dir = ds_dir / "images"
    assert [(d.impath.relative_to(image_dir).as_posix(), d.label) for d in fs.train] == ref_train
    assert [(d.impath.relative_to(image_dir).as_posix(), d.label) for d in fs.val] == ref_val
    # and the cache returns the same picks
    cached = fewshot_split(load_dataset(tmp_path, "Shuffled"), shots, seed, cache_dir=tmp_path / "cache")
    again = fewshot_split(load_dataset(tmp_path, "Shuffled"), shots, seed, cache_dir=tmp_path / "cache")
    assert cached.train == again.train == fs.train and cached.val == again.val == fs.val


def test_a_cache_written_by_the_old_rule_is_resampled(tmp_path):
    _shuffled_split_fixture(tmp_path)
    ds = load_dataset(tmp_path, "Shuffled")
    fs = fewshot_split(ds, 4, 1, cache_dir=tmp_path / "cache")
    path = tmp_path / "cache" / "Shuffled" / "shot_4-seed_1.json"
    obj = json.loads(path.read_text())
    del obj["rule"]
    obj["val"] = obj["val"][:1]
    path.write_text(json.dumps(obj))
    assert fewshot_split(ds, 4, 1, cache_dir=tmp_path / "cache").val == fs.val
    assert json.loads(path.read_text())["rule"] == FEWSHOT_RULE


def test_imagenet_picks_follow_the_file_systems_listing(tmp_path, monkeypatch):
    """ImageNet: class folders sorted, images in os.listdir order (made non-sorted here), 16 and 4 shots."""
    ds = tmp_path / "imagenet"
    wnids = [f"n{i:08d}" for i in range(5)]
    (ds / "classnames.txt").parent.mkdir(parents=True, exist_ok=True)
    (ds / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in zip(wnids, CLASSES)))
    for k, w in enumerate(wnids):
        for i in range(18 + k if k != 2 else 2):
            write_image(ds / "images" / "train" / w / f"{w}_{i:04d}.JPEG")
        write_image(ds / "images" / "val" / w / f"v_{w}.JPEG")
    real_listdir = os.listdir

    def scrambled(path):  # a non-sorted listing (fixed within this process), as ext4's hash order is
        names = real_listdir(path)
        return sorted(names, key=lambda n: hash((n, "salt")) % 1000003)

    monkeypatch.setattr(os, "listdir", scrambled)
    train_dir = ds / "images" / "train"
    for seed, shots in ((1, 16), (1, 4), (2, 16)):
        reference = []
        for label, folder in enumerate(sorted(f for f in os.listdir(train_dir) if not f.startswith("."))):
            reference += [(f"{folder}/{im}", label) for im in os.listdir(train_dir / folder) if not im.startswith(".")]
        assert [r[0] for r in reference] != sorted(r[0] for r in reference)
        random.seed(seed)
        ref = _dassl_fewshot(reference, shots)
        fs = fewshot_split(load_dataset(tmp_path, "imagenet"), shots, seed)
        assert [(d.impath.relative_to(train_dir).as_posix(), d.label) for d in fs.train] == ref
        assert fs.val == fs.test  # ImageNet: no few-shot val, val = test
