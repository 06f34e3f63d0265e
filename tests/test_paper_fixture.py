"""The paper profile's data on stand-ins in the real formats (issue 16): every CoOp layout loads, the world
stage checks and describes a profile's own data, and bad input fails naming the path or field."""

from __future__ import annotations

import shutil

import pytest

from gramlib.config import get_profile, load_params
from gramlib.data.coop import load_dataset
from gramlib.data.paper_fixture import build_paper_fixture
from gramlib.io import read_json
from gramlib.stage_config import check_dvc_layout
from gramlib.world.build import build_world

ALL = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
       "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_fixture")
    build_paper_fixture(root, weights=False)
    return root


def test_the_profile_names_every_dataset_and_variant():
    prof = get_profile("paper_fixture")
    assert sorted((*prof.datasets, *prof.variants)) == sorted(ALL)
    assert prof.backbone.arch == "ViT-B-16" and prof.backbone.pretrained == "openai" and prof.world is None
    assert get_profile("paper").datasets == prof.datasets and get_profile("paper").variants == prof.variants


def test_every_coop_layout_loads_with_imagenets_1000_classes(fixture_root):
    classes = {}
    for name in ALL:
        ds = load_dataset(fixture_root / "coop", name, verify=True)
        classes[name] = ds.num_classes
        assert ds.test, name
    assert classes["imagenet"] == classes["imagenetv2"] == classes["imagenet_sketch"] == 1000
    assert classes["imagenet_a"] == classes["imagenet_r"] == 200
    # ImageNet: 1,000 train folders, images in every 20th (4 in every 40th, 1 in the others): 25 * 4 + 25 * 1
    imagenet = load_dataset(fixture_root / "coop", "imagenet")
    assert len(imagenet.train) == 125 and len({d.label for d in imagenet.train}) == 50
    # class-name rules on the distributed names: Caltech's and EuroSAT's renaming, "_" -> " "
    assert "airplane" in load_dataset(fixture_root / "coop", "caltech101").classnames
    assert "Annual Crop Land" in load_dataset(fixture_root / "coop", "eurosat").classnames
    assert "Apply Eye Makeup" in load_dataset(fixture_root / "coop", "ucf101").classnames
    assert load_dataset(fixture_root / "coop", "imagenet").classnames[:2] == ["tench", "goldfish"]


def test_world_stage_describes_a_profiles_own_data(fixture_root):
    prof = get_profile("paper_fixture", data_root=str(fixture_root))
    manifest = build_world(prof)
    assert manifest["generated"] is False
    assert read_json(fixture_root / "world.json") == manifest
    assert set(manifest["datasets"]) == set(ALL)
    assert manifest["datasets"]["imagenet"]["n_classes"] == 1000 and manifest["datasets"]["imagenet"]["role"] == "source"
    assert manifest["datasets"]["dtd"]["template"] == "{} texture."  # CoOp's per-dataset templates
    assert manifest["cc3m"]["n_shards"] == 3


def test_cc3m_shards_are_img2datasets_output(fixture_root):
    import pandas as pd

    from gramlib.data.cc3m import read_captions

    cc3m = fixture_root / "cc3m"
    assert sorted(p.name for p in cc3m.iterdir())[:3] == ["00000.parquet", "00000.tar", "00000_stats.json"]
    rows = pd.concat(pd.read_parquet(p) for p in sorted(cc3m.glob("*.parquet")))
    assert (rows.status == "failed_to_download").sum() == 6  # failed rows are listed, in no shard
    assert len(read_captions(cc3m)) == (rows.status == "success").sum() == 150


def test_wrong_layout_names_the_expected_path(fixture_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fixture_root / "coop", root / "coop")
    (root / "coop" / "caltech-101" / "101_ObjectCategories").rename(root / "coop" / "caltech-101" / "images")
    with pytest.raises(FileNotFoundError, match=r"caltech-101/101_ObjectCategories"):
        load_dataset(root / "coop", "caltech101")
    shutil.rmtree(root / "coop" / "caltech-101")
    (root / "cc3m").mkdir()
    prof = get_profile("paper_fixture", data_root=str(root))
    with pytest.raises(FileNotFoundError, match=r"Caltech101: dataset folder not found: .*coop/caltech-101"):
        build_world(prof)


def test_missing_imagenet_classnames_is_named(fixture_root, tmp_path):
    shutil.copytree(fixture_root / "coop" / "imagenet", tmp_path / "coop" / "imagenet")
    (tmp_path / "coop" / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classnames file not found: .*imagenet/classnames.txt"):
        load_dataset(tmp_path / "coop", "imagenet")


def test_no_cc3m_shards_is_named(fixture_root, tmp_path):
    shutil.copytree(fixture_root / "coop", tmp_path / "coop")
    prof = get_profile("paper_fixture", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no CC3M shards .* in .*cc3m"):
        build_world(prof)


def test_dvc_layout_check_keeps_each_profile_in_its_folders():
    params = load_params()
    check_dvc_layout(get_profile("mini"), params)
    with pytest.raises(ValueError, match=r"set it to 'reports/paper_fixture'"):
        check_dvc_layout(get_profile("paper_fixture"), {**params, "profile": "paper_fixture"})
    check_dvc_layout(get_profile("paper_fixture"), {**params, "reports": "reports/paper_fixture"})
    with pytest.raises(ValueError, match=r"profiles.paper.data_root is 'elsewhere'.*data/paper"):
        check_dvc_layout(get_profile("paper", data_root="elsewhere"), {**params, "reports": "reports/paper"})
