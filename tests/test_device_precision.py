"""The profile's ``backbone.device`` / ``precision`` reach every place a model is built or run."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import gramlib.clip.factory as factory
from gramlib.clip.factory import Backbone, resolve_precision

REPO = Path(__file__).resolve().parents[1]


class _Built(Exception):
    pass


@pytest.fixture
def recorder(monkeypatch):
    """build_backbone replaced by a recorder of the device/precision each load site asks for."""
    seen: list[tuple[str, str]] = []

    def record(cfg, checkpoint=None, device=None, precision=None):
        seen.append((device or cfg.device, precision or cfg.precision))
        raise _Built

    monkeypatch.setattr(factory, "build_backbone", record)
    return seen


def test_every_load_site_receives_the_profile_device_and_precision(smoke, recorder):
    from gramlib.chc.stage import backbone_features
    from gramlib.experiments.protocols import load_env
    from gramlib.gram.meta_train import load_backbone

    # values no default would give: the sites must pass the profile's through
    prof = dataclasses.replace(smoke, backbone=dataclasses.replace(smoke.backbone, device="cpu", precision="bf16"))
    for site in (lambda: load_env(prof), lambda: load_backbone(prof), lambda: backbone_features(prof, None, None)):
        with pytest.raises(_Built):
            site()
    assert recorder == [("cpu", "bf16")] * 3


def test_no_module_builds_a_backbone_around_the_profile():
    """Only gramlib.clip.pretrain.load_profile_backbone builds the profile's model (so the test above covers all)."""
    callers = []
    for path in [*(REPO / "gramlib").rglob("*.py"), *(REPO / "notebooks").glob("*.ipynb")]:
        text = path.read_text()
        if path.suffix == ".py":
            tree = ast.parse(text)
            names = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
                     for n in ast.walk(tree) if isinstance(n, ast.Call)}
            if "build_backbone" in names:
                callers.append(path.relative_to(REPO).as_posix())
        elif "build_backbone(" in text:
            callers.append(path.relative_to(REPO).as_posix())
    assert sorted(callers) == ["gramlib/clip/pretrain.py"]


def test_auto_precision_and_feature_extraction_honour_the_backbone(smoke):
    from gramlib.clip.features import encode_images, eval_transform
    from gramlib.clip.pretrain import load_profile_backbone
    from gramlib.data.coop import load_dataset

    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    bb = load_profile_backbone(smoke)
    assert (bb.device, bb.precision) == ("cpu", "fp32")  # CI: no GPU, auto = CPU fp32
    ds = load_dataset(smoke.root / smoke.coop_dir, smoke.source)
    paths = [d.impath for d in ds.test[:8]]
    ref = encode_images(bb, paths, eval_transform(bb), None)
    # a bf16 backbone on CPU (autocast is CUDA-only here: same numbers) gets its own cache entry
    bf = dataclasses.replace(bb, precision="bf16")
    with torch.no_grad():
        assert torch.allclose(encode_images(bf, paths, eval_transform(bf), None), ref)
    from gramlib.clip.features import _numerics
    assert _numerics(bb) == {} and _numerics(bf) == {"precision": "bf16"}
    assert isinstance(bb, Backbone)
