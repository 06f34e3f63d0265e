"""Shared pytest set-up: deterministic, offline, CPU-only, and gentle on a 2-core machine."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Tests run tiny ops: one intra-op thread is faster and steadier than two on a shared 2-core
    machine (two threads measured 10-100x slower under load). Set before every test, because
    pre-training sets its own thread count."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """Smoke world + pre-trained tiny CLIP (about a minute or two on 2 cores), shared by the session."""
    from gramlib.clip.pretrain import backbone_dir, pretrain_or_describe
    from gramlib.world.build import build_world

    from smoke import smoke_profile

    root = tmp_path_factory.mktemp("smoke")
    prof = smoke_profile(root)
    build_world(prof)
    pretrain_or_describe(prof)
    assert (backbone_dir(prof) / "backbone.safetensors").exists()
    return prof
