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


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for one test module (gramlib.compute reuses a running session).
    Its workers inherit this environment, so they import the checkout's gramlib and the tests' helpers."""
    from pathlib import Path

    ray = pytest.importorskip("ray")
    here = Path(__file__).parent
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent)] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20, logging_level="WARNING")
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
