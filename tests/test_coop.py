"""CoOp layout reader, few-shot sampling and the base/new rule, on fixtures built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gramlib.data.coop import (COOP_DATASETS, Datum, clean_classname, fewshot_cache_path, fewshot_split,
                               generate_fewshot, get_spec, load_dataset, read_split, register_split_zhou,
                               subsample_classes, subsample_dataset, write_split)
from gramlib.data.transforms import CLIP_MEAN, load_image, make_transform

try:
    from tests.fixtures import make_coop_dataset, make_imagenet_style, write_image
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fixtures import make_coop_dataset, make_imagenet_style, write_image


def _write_raw_split(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


# ---------------------------------------------------------------------------- reading


def test_reads_fixture_dataset(tmp_path):
    make_coop_dataset(tmp_path, "Mini", counts=(6, 3, 2))
    ds = load_dataset(tmp_path, "Mini", verify=True)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 9, 6)
    assert ds.classnames == ["cat", "dog", "red car"]  # "_" -> space
    assert ds.lab2cname == {0: "cat", 1: "dog", 2: "red car"}
    assert all(d.impath.is_file() and d.impath.is_absolute() for d in ds.train)
    assert ds.image_dir == tmp_path / "Mini" / "images"


def test_split_round_trip_is_relative(tmp_path):
    ds_dir = make_coop_dataset(tmp_path, "Mini")
    raw = json.loads((ds_dir / "split_zhou_Mini.json").read_text())
    assert set(raw) == {"train", "val", "test"}
    rel, label, cname = raw["train"][0]
    assert rel == "cat/train_000.jpg" and label == 0 and cname == "cat"
    splits = read_split(ds_dir / "split_zhou_Mini.json", ds_dir / "images")
    write_split(tmp_path / "copy.json", splits["train"], splits["val"], splits["test"], image_dir=ds_dir / "images")
    again = json.loads((tmp_path / "copy.json").read_text())
    assert [i[0] for i in again["test"]] == [i[0] for i in raw["test"]]


def test_register_split_zhou_and_generic_fallback(tmp_path):
    make_coop_dataset(tmp_path, "Toys", image_dir="pics")
    registry: dict = {}
    spec = register_split_zhou("Toys", image_dir="pics", registry=registry)
    assert spec.split_file == "split_zhou_Toys.json"
    assert load_dataset(tmp_path, "Toys", registry=registry).num_classes == 3
    with pytest.raises(ValueError, match="already registered"):
        register_split_zhou("Toys", image_dir="other", registry=registry)
    make_coop_dataset(tmp_path, "Shapes")
    assert load_dataset(tmp_path, "Shapes").num_classes == 3  # unregistered: generic layout


def test_registry_matches_coop_layout():
    assert get_spec("dtd").split_file == "split_zhou_DescribableTextures.json"
    assert get_spec("caltech101").image_dir == "101_ObjectCategories"
    assert get_spec("EuroSAT").image_dir == "2750"
    assert get_spec("StanfordCars").image_dir == ""
    assert get_spec("imagenet_a").dataset_dir == "imagenet-adversarial"
    assert len([s for s in COOP_DATASETS.values() if s.loader in ("split_zhou", "fgvc_aircraft")]) >= 10


def test_eurosat_renaming(tmp_path):
    ds_dir = make_coop_dataset(tmp_path / "tmp", "x", classnames=("AnnualCrop", "SeaLake", "Forest"))
    (tmp_path / "eurosat").mkdir()
    (ds_dir / "images").rename(tmp_path / "eurosat" / "2750")
    (ds_dir / "split_zhou_x.json").rename(tmp_path / "eurosat" / "split_zhou_EuroSAT.json")
    ds = load_dataset(tmp_path, "EuroSAT")
    assert ds.classnames == ["Annual Crop Land", "Sea or Lake", "Forest"]
    assert clean_classname("Annual Crop Land", get_spec("EuroSAT").rename) == "Annual Crop Land"


def test_fgvc_aircraft_layout(tmp_path):
    d = tmp_path / "fgvc_aircraft"
    (d / "variants.txt").parent.mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    for split, rows in {"train": ["0001 707-320", "0002 F/A-18"], "val": ["0003 A300B4"],
                        "test": ["0004 A300B4"]}.items():
        (d / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
        for r in rows:
            write_image(d / "images" / f"{r.split()[0]}.jpg")
    ds = load_dataset(tmp_path, "FGVCAircraft", verify=True)
    assert ds.classnames == ["707-320", "A300B4", "F/A-18"]
    assert [(d.impath.name, d.label) for d in ds.train] == [("0001.jpg", 0), ("0002.jpg", 2)]


def test_imagenet_style_fixture(tmp_path):
    make_imagenet_style(tmp_path)
    ds = load_dataset(tmp_path, "ImageNet", verify=True)
    assert ds.classnames == ["tench", "goldfish", "great white shark", "tiger shark"]
    assert len(ds.train) == 8 and ds.val == ds.test and len(ds.test) == 8
    assert {d.label for d in ds.train if d.impath.parent.name == "n01443537"} == {1}
    v2 = load_dataset(tmp_path, "ImageNetV2")  # classnames.txt falls back to imagenet/'s
    assert [d.label for d in v2.test] == [0, 1, 2, 3] and v2.classnames[3] == "tiger shark"
    sk = load_dataset(tmp_path, "imagenet-sketch")
    assert len(sk.test) == 4 and sk.train == []
    a = load_dataset(tmp_path, "ImageNetA")  # README.txt ignored, labels 0..1 over present folders
    assert a.classnames == ["goldfish", "great white shark"]
    assert sorted({d.label for d in a.test}) == [0, 1]


# ---------------------------------------------------------------------------- bad inputs


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="caltech-101"):
        load_dataset(tmp_path, "Caltech101")
    with pytest.raises(KeyError, match="Nope"):
        load_dataset(tmp_path, "Nope")


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed JSON"),
    ({"train": [], "val": []}, "missing key 'test'"),
    ({"train": [["a/b.jpg", 0]], "val": [], "test": []}, r"train\[0\].*expected \[relative_image_path"),
    ({"train": [["a/b.jpg", "0", "a"]], "val": [], "test": []}, "label must be an int"),
    ({"train": [["a/b.jpg", 1.0, "a"]], "val": [], "test": []}, "label must be an int"),
    ({"train": [], "val": [["/etc/passwd", 0, "a"]], "test": []}, "absolute"),
    ({"train": [], "val": [], "test": [["a/../../x.jpg", 0, "a"]]}, "escapes the image folder"),
])
def test_malformed_split_names_file(tmp_path, content, message):
    split = _write_raw_split(tmp_path / "d" / "split_zhou_d.json", content)
    (tmp_path / "d" / "images").mkdir()
    with pytest.raises(ValueError, match=message) as exc:
        read_split(split, tmp_path / "d" / "images")
    assert str(split) in str(exc.value)


def test_dotdot_inside_image_folder_is_fine(tmp_path):
    split = _write_raw_split(tmp_path / "s.json", {"train": [["a/../b.jpg", 0, "a"]], "val": [], "test": []})
    assert read_split(split, tmp_path)["train"][0].label == 0


def test_missing_image_verify_and_lazy(tmp_path):
    ds_dir = make_coop_dataset(tmp_path, "Mini")
    missing = ds_dir / "images" / "dog" / "test_001.jpg"
    missing.unlink()
    ds = load_dataset(tmp_path, "Mini")  # lazy: loads
    with pytest.raises(FileNotFoundError, match="test_001.jpg"):
        load_dataset(tmp_path, "Mini", verify=True)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_image(next(d.impath for d in ds.test if d.impath == missing))


def test_inconsistent_or_gappy_labels(tmp_path):
    img = tmp_path / "d" / "images"
    img.mkdir(parents=True)
    _write_raw_split(tmp_path / "d" / "split_zhou_d.json",
                     {"train": [["a.jpg", 0, "a"], ["b.jpg", 0, "b"]], "val": [], "test": []})
    with pytest.raises(ValueError, match="label 0"):
        load_dataset(tmp_path, "d")
    _write_raw_split(tmp_path / "d" / "split_zhou_d.json",
                     {"train": [["a.jpg", 0, "a"], ["b.jpg", 2, "b"]], "val": [], "test": []})
    with pytest.raises(ValueError, match="contiguous"):
        load_dataset(tmp_path, "d")


# ---------------------------------------------------------------------------- few-shot


def test_fewshot_counts_and_determinism(tmp_path):
    make_coop_dataset(tmp_path, "Mini", counts=(6, 5, 2))
    ds = load_dataset(tmp_path, "Mini")
    fs = fewshot_split(ds, shots=4, seed=1)
    assert [sum(d.label == c for d in fs.train) for c in range(3)] == [4, 4, 4]
    assert [sum(d.label == c for d in fs.val) for c in range(3)] == [4, 4, 4]
    fs16 = fewshot_split(ds, shots=5, seed=1, repeat=True)
    assert [sum(d.label == c for d in fs16.val) for c in range(3)] == [4, 4, 4]  # min(K, 4)
    assert fs.test == ds.test
    again = fewshot_split(ds, shots=4, seed=1)
    assert again.train == fs.train and again.val == fs.val
    others = [fewshot_split(ds, shots=4, seed=s).train for s in (2, 3)]
    assert any(o != fs.train for o in others)
    assert generate_fewshot(ds.train, 2, seed=7) == generate_fewshot(ds.train, 2, seed=7)


def test_fewshot_cache_reused(tmp_path):
    make_coop_dataset(tmp_path, "Mini", counts=(6, 5, 2))
    ds = load_dataset(tmp_path, "Mini")
    cache = tmp_path / "cache"
    fs = fewshot_split(ds, 2, 1, cache)
    path = fewshot_cache_path(cache, "Mini", 2, 1)
    obj = json.loads(path.read_text())
    assert obj["shots"] == 2 and not Path(obj["train"][0][0]).is_absolute()
    # Edit the cache: a reused cache must return exactly what it holds.
    obj["train"] = obj["train"][:1]
    path.write_text(json.dumps(obj))
    assert fewshot_split(ds, 2, 1, cache).train == fs.train[:1]
    # A cache made from a different split is refused.
    obj["source"] = "0" * 16
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="different Mini split"):
        fewshot_split(ds, 2, 1, cache)


def test_short_classes_are_kept_whole_with_a_warning(tmp_path, caplog):
    make_coop_dataset(tmp_path, "Mini", counts=(3, 2, 1))
    ds = load_dataset(tmp_path, "Mini")
    with caplog.at_level("WARNING", logger="gramlib.data.coop"):
        fs = fewshot_split(ds, 16, 1)
    assert len(fs.train) == 9 and len(fs.val) == 6  # Dassl's rule: a short class keeps all its items
    assert "Mini: train: 3 class(es) have fewer than 16 shots" in caplog.text and "class 0 ('cat') has 3 image(s)" in caplog.text
    fs = fewshot_split(ds, 16, 1, repeat=True)
    assert len(fs.train) == 48 and len(fs.val) == 12


# ---------------------------------------------------------------------------- base / new


def _five_class_items() -> list[Datum]:
    names = ["a", "b", "c", "d", "e"]
    return [Datum(Path(f"/x/{n}{i}.jpg"), lab, n) for lab, n in enumerate(names) for i in range(2)]


def test_base_new_rule_hand_written():
    train = _five_class_items()
    test = list(reversed(train))
    base_tr, base_te = subsample_classes(train, test, subsample="base")
    new_tr, new_te = subsample_classes(train, test, subsample="new")
    assert [(d.impath.name, d.label) for d in base_tr] == [
        ("a0.jpg", 0), ("a1.jpg", 0), ("b0.jpg", 1), ("b1.jpg", 1), ("c0.jpg", 2), ("c1.jpg", 2)]
    assert [(d.impath.name, d.label, d.classname) for d in new_tr] == [
        ("d0.jpg", 0, "d"), ("d1.jpg", 0, "d"), ("e0.jpg", 1, "e"), ("e1.jpg", 1, "e")]
    assert [d.impath.name for d in new_te] == ["e1.jpg", "e0.jpg", "d1.jpg", "d0.jpg"]
    assert len(base_te) == 6
    assert subsample_classes(train, subsample="all")[0] == train
    with pytest.raises(ValueError, match="subsample"):
        subsample_classes(train, subsample="novel")


def test_subsample_dataset_after_fewshot(tmp_path):
    make_coop_dataset(tmp_path, "Five", classnames=("a", "b", "c", "d", "e"), counts=(3, 1, 1))
    ds = fewshot_split(load_dataset(tmp_path, "Five"), 1, 1, repeat=True)
    base, new = subsample_dataset(ds, "base"), subsample_dataset(ds, "new")
    assert base.classnames == ["a", "b", "c"] and new.classnames == ["d", "e"]
    assert sorted({d.label for d in new.test}) == [0, 1] and {d.classname for d in new.train} == {"d", "e"}


# ---------------------------------------------------------------------------- transforms


def test_transforms_and_corrupt_image(tmp_path):
    p = write_image(tmp_path / "im.jpg", size=(40, 20))
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (40, 20)
    x = make_transform(16)(im)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    torch.manual_seed(0)
    assert make_transform(16, train=True)(im).shape == (3, 16, 16)
    assert CLIP_MEAN[0] == pytest.approx(0.48145466)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad)


def test_fewshot_on_test_only_dataset_is_refused(tmp_path):
    make_imagenet_style(tmp_path)
    with pytest.raises(ValueError, match="ImageNetSketch: no train split"):
        fewshot_split(load_dataset(tmp_path, "ImageNetSketch"), 4, 1)
