"""The smoke suite's units serially, and through Ray with 1 and 2 workers, in one run (issue 17).

Why: the grid of the paper profile is hundreds of independent units; Ray is how it spreads over the
GPUs of a node or a cluster. This measures what Ray costs and gives on one machine: units per second
serially in-process (the baseline, same process, same units), on a local Ray cluster of 1 CPU and of
2 CPUs (one unit per CPU), and the 2-vs-1 speed-up. Every path computes the same rows (checked here,
as in ``tests/test_ray.py``).

Each path runs the experiment twice on the same process or cluster: **cold** (the cluster's start-up
and each worker's set-up, backbone and datasets loaded once per worker process, included, as a stage
of a few dozen units pays them) and **warm** (the same units again into a fresh results file, on the
workers already set up: the throughput a stage of hundreds of units sees, where start-up is paid once).
The headline keys (``*_units_per_s``, ``speedup_2v1``) are the warm ones; the cold ones are kept beside
them (``*_cold``) with the start-up seconds, so neither is hidden.

    python benchmarks/ray_scaling.py                   # -> benchmarks/results/ray_scaling.json
    python benchmarks/ray_scaling.py --seeds 1 --out /tmp/x.json

A smoke world and its tiny CLIP are built first in a temporary folder (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from _record import git_commit, machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["CLIP", "CoOp", "VPT"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=10, help="training epochs per unit (the unit's size)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ray_scaling.json")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))

    import pandas as pd
    import ray

    from gramlib.clip.pretrain import pretrain_or_describe
    from gramlib.compute import LOCAL, ComputeConfig
    from gramlib.config import load_params
    from gramlib.experiments.suite import Experiment, run_experiment, suite_config, units
    from gramlib.world.build import build_world
    from smoke import smoke_profile

    commit = git_commit()
    with tempfile.TemporaryDirectory(prefix="ray_scaling_") as tmp:
        prof = smoke_profile(Path(tmp))
        t = time.perf_counter()
        build_world(prof)
        pretrain_or_describe(prof)
        print(f"smoke world and backbone: {time.perf_counter() - t:.0f} s", flush=True)
        cfg = suite_config("smoke", load_params())
        exp = Experiment("bench", "base2new", 2, tuple(a.methods), tuple(a.seeds), epochs=a.epochs)
        cfg = dataclasses.replace(cfg, experiments={"bench": exp})
        n_units = len(units(prof, exp))
        runs: dict[str, dict] = {}
        rows: dict[str, pd.DataFrame] = {}
        for name, compute in (("serial", LOCAL), ("ray1", ComputeConfig(backend="ray", num_cpus=1)),
                              ("ray2", ComputeConfig(backend="ray", num_cpus=2))):
            start_s = 0.0
            if compute.backend == "ray":  # the cluster's own start-up, measured apart (map_units reuses it)
                t = time.perf_counter()
                ray.init(num_cpus=compute.num_cpus, include_dashboard=False, object_store_memory=100 * 2**20,
                         logging_level="WARNING")
                start_s = time.perf_counter() - t
            secs = {}
            for phase in ("cold", "warm"):  # warm: same units, fresh file, workers already set up
                t = time.perf_counter()
                rows[f"{name}_{phase}"] = run_experiment(prof, cfg, "bench", Path(tmp) / f"{name}_{phase}.csv",
                                                         compute=compute, progress=None)
                secs[phase] = time.perf_counter() - t
            if compute.backend == "ray":
                ray.shutdown()
            cold = secs["cold"] + start_s
            runs[name] = {"units": n_units, "cold_seconds": round(cold, 1), "warm_seconds": round(secs["warm"], 1),
                          "ray_start_s": round(start_s, 1) if compute.backend == "ray" else None,
                          "cold_units_per_s": round(n_units / cold, 4), "warm_units_per_s": round(n_units / secs["warm"], 4)}
            print(name, runs[name], flush=True)
    key = ["method", "seed", "dataset", "split", "epoch"]

    def norm(df: pd.DataFrame) -> pd.DataFrame:
        return df.drop(columns="runtime_s").sort_values(key).reset_index(drop=True)

    same = all(norm(r).equals(norm(rows["serial_cold"])) for r in rows.values())
    warm = {n: runs[n]["warm_units_per_s"] for n in runs}
    cold = {n: runs[n]["cold_units_per_s"] for n in runs}
    result = {
        "what": f"smoke base2new units ({', '.join(a.methods)}; seeds {a.seeds}; {a.epochs} epochs): serially in-process, "
                "then on a local Ray cluster of 1 and of 2 CPUs, same run; each path twice: cold (start-up included) "
                "and warm (the same units again on the set-up workers)",
        "statistic": "units_per_s and speedup_2v1 are warm (start-up paid once, as in a stage of hundreds of units); "
                     "*_cold include the cluster's start-up and each worker's set-up",
        "serial_units_per_s": warm["serial"], "ray1_units_per_s": warm["ray1"], "ray2_units_per_s": warm["ray2"],
        "speedup_2v1": round(warm["ray2"] / warm["ray1"], 2),
        "ray2_vs_serial": round(warm["ray2"] / warm["serial"], 2),
        "serial_units_per_s_cold": cold["serial"], "ray1_units_per_s_cold": cold["ray1"], "ray2_units_per_s_cold": cold["ray2"],
        "speedup_2v1_cold": round(cold["ray2"] / cold["ray1"], 2),
        "same_rows": bool(same), "runs": runs, "commit": commit,
        "machine": machine(),
        "gpu": "not measured: no GPU was lent to this session (device status 'not drawn'); "
               "benchmarks/gpu_paper_profile.py measures ViT-B/16 feature extraction when one is",
        "note": "2 shared CPU cores: the 2-CPU cluster competes with the driver and Ray's own processes",
    }
    write_result(a.out, result)


if __name__ == "__main__":
    main()
