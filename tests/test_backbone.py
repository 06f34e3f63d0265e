"""Backbone factory, pre-training (resume), feature cache and the zero-shot table on the smoke world."""

import dataclasses
import time

import numpy as np
import pytest
import torch

from gramlib.clip.factory import ConvStem, build_backbone, build_tiny_clip
from gramlib.config import BackboneConfig, get_profile


def test_tiny_clip_is_open_clip_with_a_conv_stem():
    from open_clip.transformer import VisionTransformer

    model = build_tiny_clip().eval()
    assert isinstance(model.visual, VisionTransformer)
    assert isinstance(model.visual.conv1, ConvStem)
    with torch.no_grad():
        grid = model.visual.conv1(torch.zeros(2, 3, 32, 32))
        assert grid.shape == (2, model.visual.transformer.width, 4, 4)  # what a stride-8 patch conv gives
        img, txt, scale = model(torch.zeros(2, 3, 32, 32), torch.zeros(2, 24, dtype=torch.long))[:3]
    assert img.shape == txt.shape == (2, 128)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from gramlib.io import save_safetensors

    path = tmp_path / "w.safetensors"
    save_safetensors(path, {"foo.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="does not match architecture"):
        build_backbone(BackboneConfig(), checkpoint=path)
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        build_backbone(BackboneConfig(), checkpoint=path)


def test_pretraining_resumes_bit_identically(smoke, tmp_path):
    """A run killed after 4 of 8 steps and resumed ends with exactly the weights of a straight run."""
    from gramlib.checkpoint import checkpoint_step
    from gramlib.clip.pretrain import pretrain
    from gramlib.io import load_safetensors

    prof = dataclasses.replace(smoke, backbone=dataclasses.replace(smoke.backbone, steps=8, batch_size=16, threads=1, warmup=2))
    pretrain(prof, tmp_path / "straight", save_every=2)
    pretrain(prof, tmp_path / "resumed", save_every=2, max_steps=4)  # "killed" at step 4
    assert checkpoint_step(tmp_path / "resumed" / "ckpt", "pretrain") == 4
    assert not (tmp_path / "resumed" / "backbone.safetensors").exists()
    pretrain(prof, tmp_path / "resumed", save_every=2)
    assert not (tmp_path / "resumed" / "ckpt").exists()  # the finished run's checkpoint is removed
    a = load_safetensors(tmp_path / "straight" / "backbone.safetensors")
    b = load_safetensors(tmp_path / "resumed" / "backbone.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_only_the_used_embedding_rows_is_the_same_training(smoke, tmp_path):
    """compact=True (the default) optimises the rows the corpus looks up; the full embedding with AdamW
    ends with the same weights, and the rows no caption uses keep their initial values."""
    from gramlib.clip.pretrain import pretrain
    from gramlib.io import load_safetensors

    prof = dataclasses.replace(smoke, backbone=dataclasses.replace(smoke.backbone, steps=6, batch_size=16, threads=1, warmup=2))
    pretrain(prof, tmp_path / "compact")
    pretrain(prof, tmp_path / "full", compact=False)
    a = load_safetensors(tmp_path / "compact" / "backbone.safetensors")
    b = load_safetensors(tmp_path / "full" / "backbone.safetensors")
    assert a.keys() == b.keys() and a["token_embedding.weight"].shape == (49408, 128)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.manual_seed(prof.backbone.seed)
    init = build_tiny_clip(prof.backbone.arch).token_embedding.weight.detach()
    moved = (a["token_embedding.weight"] != init).any(dim=1)
    assert 0 < int(moved.sum()) < 5000  # only the corpus's tokens were trained


def test_text_tower_over_the_used_positions_is_open_clips_encode_text():
    """Pre-training drops the positions after a batch's longest caption: same features and same
    gradients as open_clip's full-context encode_text (causal mask, end-of-text pooling)."""
    import open_clip

    from gramlib.clip.pretrain import encode_text_used, used_context

    torch.manual_seed(0)
    model = build_tiny_clip("tiny-clip-conv").double()  # float64: the two shapes round alike
    tokens = open_clip.get_tokenizer("tiny-clip-conv")(["a red star", "a sketch of the letter b on a poster", "x"])
    assert used_context(tokens).shape[1] == int((tokens != 0).sum(1).max()) < tokens.shape[1]
    with torch.no_grad():
        full = model.encode_text(tokens)
    short = encode_text_used(model, tokens)
    torch.testing.assert_close(short, full, rtol=1e-10, atol=1e-12)
    g_short = torch.autograd.grad(short.square().sum(), list(model.transformer.parameters()))
    g_full = torch.autograd.grad(model.encode_text(tokens).square().sum(), list(model.transformer.parameters()))
    for a, b in zip(g_short, g_full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    model.text_pool_type = "first"
    with pytest.raises(ValueError, match="argmax pooling"):
        encode_text_used(model, tokens)



def test_encode_texts_over_the_used_positions_equals_the_whole_context():
    """The zero-shot class prompts (``used_positions=True``) give open_clip's full-context features, and a
    tower the trim does not apply to (no argmax pooling) is run whole instead of refused."""
    import open_clip

    from gramlib.clip.features import encode_texts

    torch.manual_seed(0)
    model = build_tiny_clip("tiny-clip-conv").double().eval()
    tok = open_clip.get_tokenizer("tiny-clip-conv")
    texts = ["a photo of a star.", "a photo of a lightning bolt.", "stripes texture."]
    bb = dataclasses.replace(build_backbone(BackboneConfig(arch="tiny-clip-conv", pretrained=None)), model=model)
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1).float()
    torch.testing.assert_close(encode_texts(bb, texts, None, used_positions=True), full, rtol=0, atol=1e-6)
    torch.testing.assert_close(encode_texts(bb, texts, None), full, rtol=0, atol=1e-6)
    model.text_pool_type = "first"  # pooled at position 0: nothing to trim, and nothing raised
    with torch.no_grad():
        first = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1).float()
    torch.testing.assert_close(encode_texts(bb, texts, None, used_positions=True), first, rtol=0, atol=1e-6)

def test_feature_cache_hit_and_corrupt_entry(smoke, tmp_path, caplog):
    from gramlib.clip.features import cache_file, encode_images, eval_transform
    from gramlib.clip.pretrain import backbone_dir
    from gramlib.data.coop import load_dataset

    bb = build_backbone(smoke.backbone, backbone_dir(smoke) / "backbone.safetensors")
    ds = load_dataset(smoke.root / smoke.coop_dir, smoke.source)
    paths = [d.impath for d in ds.test[:40]]
    first = encode_images(bb, paths, eval_transform(bb), tmp_path)
    files = list((tmp_path / "image").glob("*.npy"))
    assert len(files) == 1 and first.shape == (40, bb.embed_dim)
    assert torch.allclose(first.norm(dim=-1), torch.ones(40), atol=1e-5)
    again = encode_images(bb, paths, eval_transform(bb), tmp_path)
    assert torch.equal(first, again)
    files[0].write_bytes(b"garbage")  # a corrupt entry is recomputed, never trusted
    fixed = encode_images(bb, paths, eval_transform(bb), tmp_path)
    assert torch.allclose(first, fixed)


def test_zero_shot_table_on_the_smoke_world(smoke):
    from gramlib.clip.pretrain import backbone_dir
    from gramlib.clip.zeroshot import dataset_templates, zero_shot_table

    bb = build_backbone(smoke.backbone, backbone_dir(smoke) / "backbone.safetensors")
    names = [smoke.source, smoke.variants[1]]
    zs = zero_shot_table(bb, smoke.root / smoke.coop_dir, names, dataset_templates(smoke.root), None)
    assert list(zs.columns) == ["dataset", "style", "accuracy", "n_test", "n_classes", "chance"]
    overall = zs[zs["style"] == "all"].set_index("dataset")
    assert set(overall.index) == set(names)
    # the smoke CLIP is tiny and briefly trained, but it must see: clearly above chance on its source
    assert overall.loc[smoke.source, "accuracy"] > 1.5 * overall.loc[smoke.source, "chance"]
    per_style = zs[(zs["dataset"] == smoke.variants[1]) & (zs["style"] != "all")]
    assert per_style["n_test"].sum() == overall.loc[smoke.variants[1], "n_test"]


def test_random_resized_crop_keeps_an_area_in_range_and_is_seeded():
    from gramlib.clip.pretrain import random_resized_crop

    # a ramp image (value = column index): a crop's first row runs linearly over the crop's columns,
    # so its span (last - first value) measures the crop's width in pixels
    x = torch.arange(32.0).repeat(32, 1)[None, None].repeat(64, 3, 1, 1)
    y = random_resized_crop(x, torch.Generator().manual_seed(0), 0.5)
    assert y.shape == x.shape
    width = (y[:, 0, 0, -1] - y[:, 0, 0, 0]) * 32 / 31 / 32  # fraction of the image's width
    lo = (0.5 * 3 / 4) ** 0.5  # smallest width: least area, narrowest aspect
    assert width.min() >= lo - 0.05 and width.max() <= 1.0 + 1e-4
    assert width.std() > 0.02  # crops differ between images
    z = random_resized_crop(x, torch.Generator().manual_seed(0), 0.5)
    assert torch.equal(y, z)
    with pytest.raises(ValueError, match="crop_min_area"):
        BackboneConfig(crop_min_area=0.0)
