"""The one checkpoint mechanism (gramlib.checkpoint): runs killed at random points resume bit-identically.

Kills are injected through ``gramlib.checkpoint.fault_hook``, which a save calls at every point where a
kill matters: a part's bytes in its temporary file, each part in place (so *between the files of one
set*), just before and just after the commit, after each old file is removed, after the cleanup. Some kills are real: a subprocess ends
itself with ``os._exit`` or SIGKILL at the chosen event and leaves what a dead process leaves (stray
temporary files, half a set); the others raise in process. The points are drawn with a seeded RNG, so
every run tests the same ones, and each kind of point is drawn at least once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gramlib.checkpoint as ckpt_mod
from gramlib.checkpoint import (
    checkpoint_exists,
    checkpoint_step,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    save_training_checkpoint,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXIT_RC = 75  # what a subprocess killed with os._exit returns


class Killed(BaseException):
    """A kill raised in process: BaseException, so no ``except Exception`` on the way can swallow it."""


def _record_events(fn):
    """Run ``fn`` with a hook that records every fault point; returns (fn's result, events)."""
    events: list[str] = []
    ckpt_mod.fault_hook = lambda event, path: events.append(event)
    try:
        return fn(), events
    finally:
        ckpt_mod.fault_hook = None


def _kill_at(n: int, how: str = "raise"):
    """A hook that kills the run at its ``n``-th fault point (0-based)."""
    count = [0]

    def hook(event: str, path: Path) -> None:
        if count[0] == n:
            if how == "exit":
                os._exit(EXIT_RC)
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise Killed(f"{event} {path.name}")
        count[0] += 1

    return hook


def _kill_points(events: list[str], seed: int, n_random: int) -> list[int]:
    """One point of each kind that matters, plus ``n_random`` more, all drawn with ``seed``."""
    rng = random.Random(seed)
    between = [i for i, e in enumerate(events) if e == "file-written" and events[i + 1] == "tmp-written"]
    kinds = [between] + [[i for i, e in enumerate(events) if e == k]
                         for k in ("tmp-written", "before-commit", "after-commit", "file-removed")]
    points = [rng.choice(k) for k in kinds]
    rest = [i for i in range(len(events)) if i not in points]
    return points + rng.sample(rest, n_random)


def _committed_saves(events: list[str], killed_at: int) -> int:
    """Saves whose commit happened before the kill (the hook fires before acting at ``killed_at``)."""
    return sum(1 for e in events[:killed_at] if e == "after-commit") + (events[killed_at] == "after-commit")


def _spawn(*args: str, expect: int) -> None:
    proc = subprocess.run([sys.executable, __file__, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"


def _only_the_last_set(d: Path, name: str, step: int, resumed_saves: bool = True) -> None:
    """After a resumed run's saves, the directory holds exactly its last set (leftovers of the kill are
    removed by the next save, so a kill in the last save's cleanup leaves them when nothing is left to do)."""
    if not resumed_saves:
        return
    files = {p.name for p in d.iterdir()}
    assert files - {f"{name}.json"} == {f for f in files if f.startswith(f"{name}-step{step:08d}-")}, files
    assert len(files) == 4  # the record and the params, optimizer and rng parts


# ------------------------------------------------------------------------------------------------
# the generic mechanism, on a toy loop that draws from every RNG it must restore


STEPS = 6


def toy_run(ckpt: Path, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """Adam + LambdaLR on a linear model; the data come from torch, numpy, Python and a generator."""
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.8 ** s)
    gen = torch.Generator().manual_seed(5)
    live = dict(params=dict(model.named_parameters()), optimizers={"adam": opt}, schedulers={"lr": sched},
                generators={"data": gen})
    start, losses = 0, []
    if checkpoint_exists(ckpt, "toy"):
        ck = load_checkpoint(ckpt, "toy", kind="toy")
        restore_training_state(ck, **live)
        start, losses = ck.step, ck.extra["losses"]
    for step in range(start, steps):
        x = torch.randn(8, 4, generator=gen) * (1 + float(np.random.rand())) + random.random() + torch.randn(1)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        save_training_checkpoint(ckpt, "toy", step + 1, kind="toy", extra={"losses": losses}, **live)
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out | {"losses": torch.tensor(losses, dtype=torch.float64), "adam": opt.state_dict()["state"][0]["exp_avg_sq"]}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_generic_mechanism_killed_at_random_points_resumes_bit_identically(tmp_path):
    straight, events = _record_events(lambda: toy_run(tmp_path / "straight"))
    # per save: 3 parts x (temporary, in place), before/after the commit, the previous set's 3 files removed, done
    assert len(events) == STEPS * 9 + (STEPS - 1) * 3
    points = _kill_points(events, seed=11, n_random=3)
    for i, n in enumerate(points):
        d = tmp_path / f"raise-{i}"
        ckpt_mod.fault_hook = _kill_at(n)
        try:
            with pytest.raises(Killed):
                toy_run(d)
        finally:
            ckpt_mod.fault_hook = None
        assert checkpoint_step(d, "toy") == (_committed_saves(events, n) or None), (n, events[n])
        random.seed(99)  # the resumed run must not depend on the RNGs it was started with
        _assert_same(toy_run(d), straight)
        _only_the_last_set(d, "toy", STEPS, _committed_saves(events, n) < STEPS)
    # real kills: the process dies mid-file (a stray temporary file) and between two files of one set
    for how, n in (("exit", points[1]), ("sigkill", points[0])):
        d = tmp_path / f"{how}-{n}"
        _spawn("toy", str(d), str(n), how, expect=EXIT_RC if how == "exit" else -signal.SIGKILL)
        if n == points[1]:
            assert any(p.name.endswith(".tmp") for p in d.iterdir())  # what the dead process left
        _assert_same(toy_run(d), straight)
        _only_the_last_set(d, "toy", STEPS)


def test_half_written_set_is_ignored_then_cleaned_up(tmp_path):
    toy_run(tmp_path, steps=2)
    committed = {p.name for p in tmp_path.iterdir()} - {"toy.json"}  # the step-2 set
    # what saves killed before their commit leave behind, and files that are not the checkpoint's
    strays = ["toy-step00000003-deadbeef.params.safetensors", "toy-step00000003-deadbeef.optimizer.safetensors",
              ".toy-step00000003-deadbeef.rng.safetensors.x1y2.tmp", ".toy.json.q9r8.tmp"]
    others = ["notes.txt", "toy_other-step00000001-0123abcd.params.safetensors", "other.json"]
    for f in strays + others:
        (tmp_path / f).write_bytes(b"half-written")
    ck = load_checkpoint(tmp_path, "toy", kind="toy")
    assert ck.step == 2 and len(ck.extra["losses"]) == 2
    _assert_same(toy_run(tmp_path, steps=3), toy_run(tmp_path / "straight", steps=3))
    left = {p.name for p in tmp_path.iterdir()} - {"straight"}
    assert not left & (set(strays) | committed)  # strays and the step-2 set are gone
    assert set(others) <= left  # other files are left alone


def _parts(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    save_checkpoint(tmp_path, "c", 1, {"a": {"x": torch.arange(6.0)}, "b": {"y": torch.ones(2, 2)}}, {"k": 1}, kind="t")
    return tmp_path / "c.json", {p.name.split(".")[1]: p for p in tmp_path.glob("c-*.safetensors")}


def test_corrupt_truncated_or_missing_files_raise_naming_the_file(tmp_path):
    record, parts = _parts(tmp_path)
    ck = load_checkpoint(tmp_path, "c", kind="t")
    assert ck.step == 1 and ck.state == {"k": 1} and torch.equal(ck.tensors["a"]["x"], torch.arange(6.0))
    with pytest.raises(ValueError, match="c.json: a 'other' checkpoint was expected, found 't'"):
        load_checkpoint(tmp_path, "c", kind="other")
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_checkpoint(tmp_path, "nothere")
    data = parts["a"].read_bytes()
    parts["a"].write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{parts['a'].name}.*corrupt or truncated"):
        load_checkpoint(tmp_path, "c")
    flipped = bytearray(data)
    flipped[-2] ^= 0xFF  # a valid safetensors file with a wrong number
    parts["a"].write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=parts["a"].name):
        load_checkpoint(tmp_path, "c")
    parts["a"].write_bytes(data)
    parts["b"].unlink()
    with pytest.raises(ValueError, match=f"{parts['b'].name}.*missing"):
        load_checkpoint(tmp_path, "c")
    text = record.read_text()
    record.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="c.json"):
        load_checkpoint(tmp_path, "c")
    record.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="c.json.*not a gramlib-checkpoint record"):
        load_checkpoint(tmp_path, "c")


def test_restoring_into_another_shape_changes_nothing_and_names_the_record(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    save_training_checkpoint(tmp_path, "m", 1, kind="m", params=dict(model.named_parameters()), optimizers={"sgd": opt})
    ck = load_checkpoint(tmp_path, "m")
    other = torch.nn.Linear(5, 3)
    before = other.weight.detach().clone()
    with pytest.raises(ValueError, match=r"m\.json: param 'weight' has shape \[3, 4\]"):
        restore_training_state(ck, params=dict(other.named_parameters()))
    assert torch.equal(other.weight, before)
    with pytest.raises(ValueError, match="optimizer 'adam' present in checkpoint and state disagree"):
        restore_training_state(ck, params=dict(model.named_parameters()), optimizers={"adam": opt})


# ------------------------------------------------------------------------------------------------
# the few-shot tuning loop (tests/test_train.py's tiny CLIP and data), killed for real and in process


def _tuning_setup():
    from test_train import CLASSES, _coop, _feature_data
    from tiny_openclip import build_tiny_clip

    tiny = build_tiny_clip(seed=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % len(CLASSES)
    return tiny, _feature_data(_coop(tiny), images)


def tune(tiny, data, ckpt: Path):
    from test_train import CFG, _coop
    from gramlib.tuning.train import evaluate, train_prompt

    return train_prompt(_coop(tiny), data, CFG, eval_fn=lambda lrn, th, e: {"acc": evaluate(lrn, th, data)},
                        ckpt_dir=ckpt)


def test_tuning_loop_killed_at_random_points_resumes_bit_identically(tmp_path):
    from test_train import CFG

    tiny, data = _tuning_setup()
    full, events = _record_events(lambda: tune(tiny, data, tmp_path / "full"))
    assert len(events) == CFG.epochs * 9 + (CFG.epochs - 1) * 3
    points = _kill_points(events, seed=7, n_random=1)  # 6 points, the first 3 in a subprocess
    for i, n in enumerate(points):
        d = tmp_path / f"kill-{i}"
        if i < 3:  # a real kill of a subprocess that trains from scratch
            how = "sigkill" if i == 0 else "exit"
            _spawn("tune", str(d), str(n), how, expect=-signal.SIGKILL if how == "sigkill" else EXIT_RC)
        else:
            ckpt_mod.fault_hook = _kill_at(n)
            try:
                with pytest.raises(Killed):
                    tune(tiny, data, d)
            finally:
                ckpt_mod.fault_hook = None
        torch.manual_seed(1234)  # scramble the global RNG: resume must restore what matters
        resumed = tune(tiny, data, d)
        committed = _committed_saves(events, n)
        assert resumed.resumed_from == (committed - 1 if committed else None), (n, events[n])
        for k in full.theta:
            assert torch.equal(resumed.theta[k], full.theta[k]), (n, events[n], k)
        drop = lambda h: [{k: v for k, v in r.items() if k != "train_s"} for r in h]  # noqa: E731
        assert drop(resumed.history) == drop(full.history)
        _only_the_last_set(d, "tuning", CFG.epochs, committed < CFG.epochs)


# ------------------------------------------------------------------------------------------------
# subprocess entry point: python tests/test_checkpoint.py {toy|tune} CKPT_DIR KILL_AT {exit|sigkill}


def _main(argv: list[str]) -> None:
    what, d, n, how = argv
    torch.set_num_threads(1)  # as in the test process (conftest): same kernels, same bits
    if what == "toy":
        ckpt_mod.fault_hook = _kill_at(int(n), how)
        toy_run(Path(d))
    else:
        tiny, data = _tuning_setup()
        ckpt_mod.fault_hook = _kill_at(int(n), how)
        tune(tiny, data, Path(d))
    sys.exit(3)  # not killed: the test fails on this exit code


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    _main(sys.argv[1:])
