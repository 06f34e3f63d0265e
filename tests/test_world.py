"""The mini world: deterministic, in the real formats, and validated."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gramlib.config import get_profile
from gramlib.world.build import CC3M, WEB, _render_chunk, _web_sample, world_spec
from gramlib.world.render import CANVAS, STYLES, UNSEEN_STYLES, RenderOptions, Placement, concept_mask, paint, render
from gramlib.world.spec import load_spec


def test_spec_is_rich_enough():
    spec = load_spec()
    assert len(spec.concepts) >= 48
    assert len(spec.families) >= 5
    assert len(STYLES) >= 5
    names = set(spec.datasets)
    assert {"mini_imagenet", "mini_imagenet_v2", "mini_imagenet_sketch", "mini_imagenet_a", "mini_imagenet_r"} <= names
    assert len([d for d in spec.datasets.values() if d.role == "target"]) >= 6


@pytest.mark.parametrize("concepts_per_family", [None, 4])  # mini, smoke
def test_cross_dataset_targets_share_no_label_with_the_source(concepts_per_family):
    """Issue 14: Tables 3/5 test a prompt on labels it was not tuned on; variants keep the source's."""
    spec = load_spec().subset(concepts_per_family)
    source = [d for d in spec.datasets.values() if d.role == "source"]
    assert len(source) == 1
    src = {spec.concepts[c].classname for c in source[0].concepts}
    targets = [d for d in spec.datasets.values() if d.role == "target"]
    assert len(targets) == 6  # every target survives the smoke subset
    for d in targets:
        names = {spec.concepts[c].classname for c in d.concepts}
        assert len(names) >= 2 and not names & src, d.name
    for d in spec.datasets.values():
        if d.role == "variant":
            assert set(d.concepts) == set(source[0].concepts)


def test_rendering_is_deterministic_and_styles_differ():
    a, _ = render("star", "photo", np.random.default_rng(3), 32)
    b, _ = render("star", "photo", np.random.default_rng(3), 32)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    imgs = [render("star", s, np.random.default_rng(3), 32)[0].astype(float) for s in STYLES]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 5


def _star_mask() -> np.ndarray:
    return np.asarray(concept_mask("star", Placement(CANVAS / 2, CANVAS / 2, 0.35 * CANVAS, 0.0)))


def test_blueprint_draws_exactly_the_outline_of_the_concept():
    """Bright pixels are the mask's inner boundary (computed here by binary erosion), nothing else."""
    from scipy.ndimage import binary_erosion

    m = _star_mask() > 127
    outline = m & ~binary_erosion(m, structure=np.ones((3, 3)), border_value=0)
    img = paint(Image.fromarray(_star_mask()), "blueprint", np.random.default_rng(0), 0.3)
    assert np.array_equal(img.min(axis=-1) > 190, outline)


def test_stipple_dot_density_marks_the_concept():
    """Dots fall inside the shape with p = 0.35 and outside with p = 0.04 (binomial bounds, 5 sigma)."""
    m = _star_mask() > 127
    img = paint(Image.fromarray(_star_mask()), "stipple", np.random.default_rng(1), 0.5)
    dots = img.mean(axis=-1) < 150
    for region, p in ((m, 0.35), (~m, 0.04)):
        n = int(region.sum())
        assert abs(dots[region].mean() - p) < 5 * np.sqrt(p * (1 - p) / n), (p, dots[region].mean())


def test_negative_is_the_inverted_photo():
    mask = Image.fromarray(_star_mask())
    photo = paint(mask, "photo", np.random.default_rng(2), 0.1)
    neg = paint(mask, "negative", np.random.default_rng(2), 0.1)
    assert np.allclose(neg, 255.0 - photo)


def test_pretraining_corpora_never_show_an_unseen_style():
    """The unseen styles are downstream-only: the web and CC3M-like samples draw from STYLES alone."""
    assert not set(UNSEEN_STYLES) & set(STYLES)
    cfg = dataclasses.replace(get_profile("smoke").world, concepts_per_family=2)
    spec = world_spec(cfg)
    seen = {_web_sample(spec, cfg, i, corpus)["style"] for i in range(120) for corpus in (WEB, CC3M)}
    assert seen == set(STYLES)


def test_a_dataset_may_use_an_unseen_style_and_an_unknown_style_names_the_field(tmp_path):
    import yaml

    raw = yaml.safe_load(open(load_spec.__globals__["DEFAULT_SPEC"]))
    raw["datasets"]["mini_glyphs_stipple"]["styles"] = {"negative": 1.0}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_spec(path).datasets["mini_glyphs_stipple"].styles == {"negative": 1.0}
    raw["datasets"]["mini_glyphs_stipple"]["styles"] = {"embroidery": 1.0}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"w.yaml: datasets.mini_glyphs_stipple.styles: unknown style 'embroidery'"):
        load_spec(path)


def test_samples_do_not_depend_on_worker_count():
    cfg = get_profile("smoke").world
    spec = world_spec(cfg)
    one = _render_chunk((spec, cfg, WEB, range(0, 6)))
    split = _render_chunk((spec, cfg, WEB, range(0, 3))) + _render_chunk((spec, cfg, WEB, range(3, 6)))
    for x, y in zip(one, split):
        assert x["caption"] == y["caption"] and np.array_equal(x["image"], y["image"])


def test_mismatched_fraction_is_as_specified():
    cfg = dataclasses.replace(get_profile("smoke").world, concepts_per_family=2)
    spec = world_spec(cfg)
    flags = [_web_sample(spec, cfg, i, CC3M)["mismatched"] for i in range(600)]
    assert 0.06 < np.mean(flags) < 0.14
    assert not any(_web_sample(spec, cfg, i, WEB)["mismatched"] for i in range(50))


def test_spec_errors_name_the_field(tmp_path):
    import yaml

    raw = yaml.safe_load(open(load_spec.__globals__["DEFAULT_SPEC"]))
    raw["datasets"]["mini_glyphs_stipple"]["concepts"] = ["unicorn"]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"w.yaml: datasets.mini_glyphs_stipple.concepts: unknown concept 'unicorn'"):
        load_spec(path)
    with pytest.raises(FileNotFoundError, match="world spec not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown render option"):
        RenderOptions.from_spec({"blur": 3})


def test_smoke_world_is_written_in_the_real_formats(smoke):
    from gramlib.data.cc3m import read_captions, read_shards
    from gramlib.data.coop import load_dataset
    from gramlib.io import read_json

    root = smoke.root
    manifest = read_json(root / "world.json")
    # web corpus
    images = np.load(root / "web" / "images.npy")
    captions = pd.read_parquet(root / "web" / "captions.parquet")
    assert images.shape == (smoke.world.n_web, 32, 32, 3) and len(captions) == smoke.world.n_web
    # CC3M-like shards: img2dataset layout, ground truth outside the shard folder
    shard_dir = root / smoke.cc3m_dir
    assert sorted(p.name for p in shard_dir.glob("*.tar"))[:2] == ["00000.tar", "00001.tar"]
    assert (shard_dir / "00000_stats.json").exists()
    assert not list(shard_dir.glob("*truth*"))
    caps = read_captions(shard_dir)
    assert len(caps) == smoke.world.n_cc3m
    truth = pd.read_parquet(root / "cc3m_truth.parquet")
    assert set(truth.columns) >= {"key", "concept", "style", "mismatched"}
    assert set(caps.key) == set(truth.key)
    rows, _ = read_shards(sorted(shard_dir.glob("*.tar"))[:1])
    key, image, caption, meta = rows[0]
    assert image.size == (32, 32) and caption and meta["status"] == "success"
    # CoOp layout with split_zhou JSON
    for name in smoke.datasets + smoke.variants:
        ds = load_dataset(root / smoke.coop_dir, name)
        assert ds.test and ds.num_classes == manifest["datasets"][name]["n_classes"]
        assert (root / smoke.coop_dir / name / f"split_zhou_{name}.json").exists()
    src = load_dataset(root / smoke.coop_dir, smoke.source)
    assert len(src.train) == manifest["datasets"][smoke.source]["train"]


def test_world_manifest_is_deterministic_content(smoke):
    """world.json is part of a DVC output (data/<profile>): wall-clock timings in it would change the
    output's hash on every run and rerun everything downstream of the whole folder."""
    from gramlib.io import read_json

    manifest = read_json(smoke.root / "world.json")
    assert "timings" not in manifest
    assert manifest["profile"] == "smoke" and manifest["datasets"]


def test_rebuilding_a_world_replaces_its_corpora(tmp_path):
    """The world stage's DVC output is world.json, so DVC no longer empties data/<profile> first: a rerun
    must replace the corpora itself (no stale shard kept) and, being deterministic, write the same manifest."""
    import dataclasses

    from gramlib.config import get_profile
    from gramlib.io import read_json
    from gramlib.world.build import build_world

    smoke = get_profile("smoke", data_root=str(tmp_path / "w"))
    tiny = dataclasses.replace(smoke, world=dataclasses.replace(smoke.world, n_web=120, n_cc3m=60, shard_size=30,
                                                                split_scale=0.1, workers=1))
    build_world(tiny)
    first = read_json(tmp_path / "w" / "world.json")
    stale = tmp_path / "w" / "cc3m" / "00099.tar"
    stale.write_bytes(b"left from another world")
    build_world(tiny)
    assert not stale.exists()
    assert read_json(tmp_path / "w" / "world.json") == first
    assert first["generated"] is True and set(first["digest"]) == {"web", "cc3m", "cc3m_truth", "coop"}
