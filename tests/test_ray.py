"""Issue 17: the experiment grid on Ray (a local cluster, CPU only).

The same units through Ray and serially give the same rows; a worker killed in the middle of a unit
(the fault-injection hook of :class:`gramlib.compute.ComputeConfig`) has its unit re-run, and every
unit's rows are present exactly once.
"""

from __future__ import annotations

import dataclasses
import os

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from gramlib.compute import LOCAL, ComputeConfig, UnitResources, compute_config, map_units  # noqa: E402

RAY = ComputeConfig(backend="ray", num_cpus=2, max_retries=2)


# module-level: Ray ships functions by reference to this module
_SETUPS: list[int] = []


def _setup(base: int) -> None:
    _SETUPS.append(base)


def _square(x: int) -> tuple[int, int, int]:
    return x * x + _SETUPS[-1], os.getpid(), len(_SETUPS)


def test_map_units_on_ray_equals_local_and_sets_up_once_per_worker(ray_cluster):
    items = list(range(12))
    local: dict[int, tuple] = {}
    map_units(_square, items, lambda i, r: local.__setitem__(i, r), LOCAL, setup=_setup, setup_args=(100,))
    got: dict[int, tuple] = {}
    calls: list[int] = []

    def record(i: int, r: tuple) -> None:
        calls.append(i)
        got[i] = r

    map_units(_square, items, record, RAY, setup=_setup, setup_args=(100,))
    assert sorted(calls) == items  # one result per unit
    assert {i: r[0] for i, r in got.items()} == {i: r[0] for i, r in local.items()} == {i: i * i + 100 for i in items}
    assert all(r[2] == 1 for r in got.values())  # each worker process ran the set-up once, whatever it ran after


def test_a_killed_worker_has_its_unit_rerun_and_recorded_once(ray_cluster, tmp_path):
    cfg = dataclasses.replace(RAY, fault_dir=str(tmp_path / "faults"))
    items = list(range(4))
    calls: list[int] = []
    map_units(_square, items, lambda i, r: calls.append(i), cfg, setup=_setup, setup_args=(0,))
    assert sorted(calls) == items
    assert len(list((tmp_path / "faults").glob("*.killed"))) == len(items)  # every unit's first worker died


def _boom(x: int) -> int:
    if x == 3:
        raise ValueError("unit 3 is broken")
    return x


def test_a_unit_that_raises_is_not_retried_and_raises_in_the_driver(ray_cluster):
    seen: list[int] = []
    with pytest.raises(ray.exceptions.RayTaskError, match="unit 3 is broken"):
        map_units(_boom, [0, 1, 2, 3], lambda i, r: seen.append(i), RAY)
    assert 3 not in seen


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in df.columns if c not in ("runtime_s",)]  # wall time is the only thing allowed to differ
    return df[keep].sort_values(["method", "seed", "dataset", "split", "epoch"]).reset_index(drop=True)


def test_a_smoke_experiment_through_ray_gives_the_serial_rows_even_after_kills(ray_cluster, smoke, tmp_path):
    from gramlib.config import load_params
    from gramlib.compute import fault_marker
    from gramlib.experiments.suite import Experiment, longest_first, read_done, run_experiment, suite_config, units

    cfg = suite_config("smoke", load_params())
    exp = Experiment("tiny", "base2new", 2, ("CLIP", "CoOp"), (1, 2), epochs=2, datasets=(smoke.datasets[1],))
    cfg = dataclasses.replace(cfg, experiments={"tiny": exp})
    serial = run_experiment(smoke, cfg, "tiny", tmp_path / "serial.csv", compute=LOCAL, progress=None)
    on_ray = run_experiment(smoke, cfg, "tiny", tmp_path / "ray.csv", compute=RAY, progress=None)
    pd.testing.assert_frame_equal(_rows(serial), _rows(on_ray))
    faults = tmp_path / "faults"
    todo = longest_first(units(smoke, exp), cfg, "smoke")
    for u in todo[1:]:  # spare all units but the first submitted, whose worker dies mid-unit
        fault_marker(faults, (cfg, u)).parent.mkdir(parents=True, exist_ok=True)
        fault_marker(faults, (cfg, u)).write_text("spared")
    killed = run_experiment(smoke, cfg, "tiny", tmp_path / "killed.csv", progress=None,
                            compute=dataclasses.replace(RAY, fault_dir=str(faults)))
    assert fault_marker(faults, (cfg, todo[0])).read_text() != "spared"  # it was killed once, then re-run
    pd.testing.assert_frame_equal(_rows(serial), _rows(killed))  # each unit's rows exactly once
    assert read_done(tmp_path / "killed.csv") == {u.key for u in units(smoke, exp)}


def test_compute_config_is_strict_and_names_the_key(tmp_path):
    from gramlib.config import load_params

    params = load_params()
    params["profiles"]["mini"]["compute"] = {"backend": "slurm"}
    with pytest.raises(ValueError, match="compute.backend"):
        compute_config("mini", params)
    params["profiles"]["mini"]["compute"] = {"unit": {"gpu": 1}}
    with pytest.raises(ValueError, match=r"profiles\.mini\.compute"):
        compute_config("mini", params)
    assert compute_config("mini", load_params(), backend="local").backend == "local"  # the CLI's override
    assert ComputeConfig(unit=UnitResources(cpus=2, gpus=0.5)).unit.gpus == 0.5


def test_suite_units_get_their_declared_cpus_as_torch_threads(monkeypatch, tmp_path):
    """`gramlib suite` runs each unit with compute.unit.cpus intra-op threads (a 2-CPU unit on a 2-core
    machine uses both), unless --threads overrides it."""
    import yaml

    import gramlib.experiments.suite as suite
    from gramlib.cli import main
    from gramlib.config import REPO

    seen = []
    monkeypatch.setattr(suite, "run_experiment", lambda *a, threads, **k: seen.append(threads))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for cpus, argv, want in ((2, [], 2), (3, ["--threads", "1"], 1), (1.5, [], 1)):
        params["profiles"]["smoke"]["compute"] = {"backend": "local", "unit": {"cpus": cpus, "gpus": 0}}
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        assert main(["suite", "--profile", "smoke", "--params", str(path), "--experiment", "base2new", *argv]) == 0
        assert seen[-1] == want
