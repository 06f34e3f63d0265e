"""The paper backbone's weights: OpenAI's CLIP needs QuickGELU, both weight routes (the Hugging Face
cache open_clip resolves ``pretrained="openai"`` from, and a typed local checkpoint) load it, missing
weights fail at once naming both routes, and the feature-cache identity names file and activation.

Random ViT-B/16 weights stand in for OpenAI's (nothing can be downloaded here), written once per module
in fp16 (~300 MB) in the exact cache layout."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from gramlib.clip.factory import build_backbone, resolve_weights, uses_quick_gelu, weights_identity
from gramlib.config import BackboneConfig, get_profile

HUB_REPO = "timm/vit_base_patch16_clip_224.openai"  # open_clip's hf_hub entry for ('ViT-B-16', 'openai')


def _quick_gelu_everywhere(model) -> bool:
    from open_clip.transformer import QuickGELU

    acts = [m for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))]
    return bool(acts) and all(isinstance(m, QuickGELU) for m in acts)


@pytest.fixture(scope="module")
def openai_standin(tmp_path_factory):
    """(hub cache dir, weights file in it): random ViT-B-16 weights in the Hugging Face cache layout."""
    import open_clip
    from safetensors.torch import save_file

    hub = tmp_path_factory.mktemp("hf") / "hub"
    snap = hub / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (hub / f"models--{HUB_REPO.replace('/', '--')}" / "refs").mkdir()
    (hub / f"models--{HUB_REPO.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path = snap / "open_clip_model.safetensors"
    save_file(state, str(path))
    return hub, path


def test_paper_profile_backbone_from_openai_uses_quick_gelu(openai_standin, monkeypatch):
    hub, path = openai_standin
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    cfg = get_profile("paper").backbone
    assert cfg.arch == "ViT-B-16" and cfg.pretrained == "openai" and uses_quick_gelu(cfg)
    assert resolve_weights(cfg) == path
    bb = build_backbone(cfg, device="cpu")
    assert _quick_gelu_everywhere(bb.model)
    # the weights are the file's (a random model would not equal them)
    w = bb.model.visual.conv1.weight
    from safetensors.torch import load_file
    assert torch.equal(w, load_file(str(path))["visual.conv1.weight"].float())
    # the local-checkpoint route: same weights, same activation, same identity
    local = dataclasses.replace(cfg, checkpoint=str(path))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub.parent / "empty"))
    bb2 = build_backbone(local, device="cpu")
    assert _quick_gelu_everywhere(bb2.model) and bb2.identity == bb.identity
    assert torch.equal(bb2.model.visual.conv1.weight, w)


def test_identity_names_weights_and_activation(openai_standin, tmp_path):
    _, path = openai_standin
    cfg = BackboneConfig(arch="ViT-B-16", pretrained="openai", checkpoint=str(path))
    ident = weights_identity(cfg, path)
    assert "quickgelu" in ident
    assert weights_identity(dataclasses.replace(cfg, quick_gelu=False), path) != ident  # activation fixed or not
    other = tmp_path / "other.safetensors"
    other.write_bytes(path.read_bytes()[:-1] + b"\x01")
    assert weights_identity(cfg, other) != ident  # other weights: other features


def test_missing_weights_fail_at_once_naming_both_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache: no weights anywhere
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even online-configured: no network is tried
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        build_backbone(BackboneConfig(arch="ViT-B-16", pretrained="openai"), device="cpu")
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "Hugging Face cache" in msg and "backbone.checkpoint" in msg and HUB_REPO in msg
    with pytest.raises(FileNotFoundError, match="backbone.checkpoint .*nope.bin does not exist"):
        build_backbone(BackboneConfig(arch="ViT-B-16", pretrained="openai", checkpoint=str(tmp_path / "nope.bin")))


def test_backbone_stage_fails_at_once_without_weights(tmp_path, monkeypatch):
    from gramlib.clip.pretrain import pretrain_or_describe

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    prof = dataclasses.replace(get_profile("paper"), artifacts_root=str(tmp_path / "artifacts"))
    with pytest.raises(FileNotFoundError, match="two routes"):
        pretrain_or_describe(prof)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("backbone.json"))


def test_backbone_config_checks_device_and_precision():
    with pytest.raises(ValueError, match="backbone.precision"):
        BackboneConfig(precision="fp16")
    with pytest.raises(ValueError, match="backbone.device"):
        BackboneConfig(device="gpu")


def test_a_relative_checkpoint_is_the_repositorys_from_any_working_directory(openai_standin, monkeypatch, tmp_path):
    """params.yaml's paths are repository-relative; notebooks run with notebooks/ as their working directory."""
    from gramlib.config import REPO

    _, path = openai_standin
    link = REPO / "cache" / "test-relative-checkpoint.safetensors"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(path)
    try:
        cfg = dataclasses.replace(get_profile("paper").backbone, checkpoint="cache/test-relative-checkpoint.safetensors")
        monkeypatch.chdir(tmp_path)
        assert resolve_weights(cfg) == link
    finally:
        link.unlink()
