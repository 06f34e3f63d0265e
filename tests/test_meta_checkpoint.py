"""Meta-training checkpoints: bit-identical resume, atomic commit, loud failures on corruption."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gramlib.gram.meta import MetaConfig, MetaState, init_meta_state, meta_step
from gramlib.gram.checkpoint import (
    checkpoint_exists,
    load_meta_checkpoint,
    resume_or_init,
    save_meta_checkpoint,
)
from gramlib.gram.regulator import RegulatorConfig, init_regulator

K, FEAT = 3, 6


class Toy:
    """A small prompt learner over fixed random features (built deterministically from a seed)."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.U = torch.randn(4, FEAT, generator=g)
        self.cls = torch.randn(K, 4, generator=g)
        self.theta0 = {"ctx": torch.randn(2, 4, generator=g) * 0.3, "vpt": torch.randn(2, FEAT, generator=g) * 0.3}

    def loss(self, theta: dict, batch: tuple) -> torch.Tensor:
        x, y = batch
        w = torch.tanh(theta["ctx"].sum(0) + self.cls) @ self.U  # (K, FEAT)
        return F.cross_entropy((x + torch.tanh(theta["vpt"]).mean(0)) @ w.T, y)


def sample_tasks(n_tasks: int) -> list:
    """Draws from all three global RNGs, so resuming must restore each of them."""
    tasks = []
    for _ in range(n_tasks):
        noise = 0.5 + random.random()  # python
        classes = np.random.permutation(K)  # numpy

        def batch(n: int) -> tuple:
            y = torch.as_tensor(classes[np.arange(n) % K])
            return torch.randn(n, FEAT) * noise + torch.randn(K, FEAT)[y], y  # torch

        tasks.append((batch(6), batch(9)))
    return tasks


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


CONFIGS = {
    "adam": MetaConfig(alpha=0.2, lr_theta=0.01, lr_phi=0.01, optimizer="adam", meta_batch=3),
    "sgd-momentum-vmap": MetaConfig(
        alpha=0.2, lr_theta=0.05, lr_phi=0.05, momentum=0.9, vectorize=True, meta_batch=3,
        regulator=RegulatorConfig(kind="elementwise"),
    ),
}


def build(cfg: MetaConfig) -> tuple[Toy, MetaState]:
    """Everything from scratch: model, theta, phi, optimizers, global seeds."""
    seed_everything(123)
    toy = Toy(seed=7)
    phi = init_regulator(toy.theta0, cfg.regulator)
    return toy, init_meta_state(toy.theta0, phi, cfg)


def run(state: MetaState, toy: Toy, cfg: MetaConfig, steps: int) -> None:
    for _ in range(steps):
        meta_step(state, sample_tasks(cfg.meta_batch), toy.loss, cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_is_bit_identical(tmp_path: Path, name: str) -> None:
    cfg = CONFIGS[name]
    toy, straight = build(cfg)
    run(straight, toy, cfg, 6)

    toy, first = build(cfg)
    run(first, toy, cfg, 3)
    save_meta_checkpoint(tmp_path, first, cfg, extra={"note": "after 3 steps"})
    del first, toy
    seed_everything(999)  # a fresh process would start from other RNG states
    torch.randn(17), np.random.rand(3), random.random()

    resumed = resume_or_init(tmp_path, lambda: build(cfg)[1], cfg)
    assert resumed.resumed and resumed.extra == {"note": "after 3 steps"} and resumed.state.step == 3
    run(resumed.state, Toy(seed=7), cfg, 3)

    assert resumed.state.step == straight.step == 6
    for k in straight.theta:
        assert torch.equal(resumed.state.theta[k], straight.theta[k]), k
    for k in straight.phi:
        assert torch.equal(resumed.state.phi[k], straight.phi[k]), k
    # the optimizers' internal state also matches (Adam moments / momentum buffers)
    a, b = straight.opt_theta.state_dict()["state"], resumed.state.opt_theta.state_dict()["state"]
    for idx in a:
        for key, value in a[idx].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[idx][key])


def test_fresh_start_when_no_checkpoint(tmp_path: Path) -> None:
    cfg = CONFIGS["adam"]
    out = resume_or_init(tmp_path / "none", lambda: build(cfg)[1], cfg)
    assert not out.resumed and out.state.step == 0 and out.extra is None


def test_commit_is_atomic_and_stale_tensors_are_removed(tmp_path: Path) -> None:
    cfg = CONFIGS["adam"]
    toy, state = build(cfg)
    run(state, toy, cfg, 1)
    save_meta_checkpoint(tmp_path, state, cfg)
    saved_theta = {k: v.clone() for k, v in state.theta.items()}
    run(state, toy, cfg, 1)
    save_meta_checkpoint(tmp_path, state, cfg)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert [f.split(".")[1] for f in files] == ["optimizer", "params", "rng"]  # one set: the step-1 set was removed
    assert all(f.startswith("meta_state-step00000002-") for f in files)
    # a run killed after writing a new tensors file but before committing its JSON record:
    record = json.loads((tmp_path / "meta_state.json").read_text())
    (tmp_path / "meta_state-step00000099-deadbeef.params.safetensors").write_bytes(b"half-written")
    fresh = build(cfg)[1]
    loaded = load_meta_checkpoint(tmp_path, fresh)
    assert loaded.step == record["step"] == 2  # the committed checkpoint is what loads
    assert not all(torch.equal(fresh.theta[k], saved_theta[k]) for k in saved_theta)
    assert checkpoint_exists(tmp_path) and not checkpoint_exists(tmp_path / "elsewhere")


def _saved(tmp_path: Path) -> tuple[MetaConfig, Path, Path]:
    cfg = CONFIGS["adam"]
    toy, state = build(cfg)
    run(state, toy, cfg, 1)
    json_path = save_meta_checkpoint(tmp_path, state, cfg)
    (tensors_path,) = tmp_path.glob("meta_state-*.params.safetensors")  # theta and phi
    return cfg, json_path, tensors_path


def test_truncated_tensors_file_raises_value_error_naming_it(tmp_path: Path) -> None:
    cfg, _, tensors_path = _saved(tmp_path)
    data = tensors_path.read_bytes()
    tensors_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=tensors_path.name):
        resume_or_init(tmp_path, lambda: build(cfg)[1], cfg)


def test_flipped_byte_in_tensors_file_raises_value_error(tmp_path: Path) -> None:
    cfg, _, tensors_path = _saved(tmp_path)
    data = bytearray(tensors_path.read_bytes())
    data[-3] ^= 0xFF  # inside tensor data: a valid safetensors file with wrong numbers
    tensors_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=tensors_path.name):
        load_meta_checkpoint(tmp_path, build(cfg)[1])


def test_corrupt_or_incomplete_json_raises_value_error_naming_it(tmp_path: Path) -> None:
    cfg, json_path, _ = _saved(tmp_path)
    text = json_path.read_text()
    json_path.write_text(text[: len(text) // 3])
    with pytest.raises(ValueError, match="meta_state.json"):
        load_meta_checkpoint(tmp_path, build(cfg)[1])
    record = json.loads(text)
    del record["state"]["training"]["optimizers"]
    json_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="meta_state.json"):
        load_meta_checkpoint(tmp_path, build(cfg)[1])


def test_missing_tensors_file_and_shape_mismatch_raise(tmp_path: Path) -> None:
    cfg, _, tensors_path = _saved(tmp_path)
    other = build(cfg)[1]
    other.theta["ctx"] = torch.zeros(3, 4)  # a differently shaped learner
    with pytest.raises(ValueError, match="meta_state.json"):
        load_meta_checkpoint(tmp_path, other)
    tensors_path.unlink()
    with pytest.raises(ValueError, match=tensors_path.name):
        load_meta_checkpoint(tmp_path, build(cfg)[1])


def test_changed_config_on_resume_warns(tmp_path: Path) -> None:
    cfg, _, _ = _saved(tmp_path)
    changed = MetaConfig(**{**cfg.to_dict(), "regulator": cfg.regulator, "alpha": 0.5})
    with pytest.warns(UserWarning, match="alpha"):
        resume_or_init(tmp_path, lambda: build(cfg)[1], changed)
