"""``gramlib <command> --profile <name>``: the one command line of the project; every DVC stage calls it.

    gramlib world      --profile mini              # generate the mini world (data/<profile>/), or check a profile's own data
    gramlib paper-fixture --profile paper_fixture  # stand-ins of the paper data in the real formats (issue 16)
    gramlib pretrain   --profile mini              # pre-train the tiny CLIP (artifacts/<profile>/backbone/)
    gramlib chc        --profile mini              # §3.2: topics and visual domains of the web corpus
    gramlib meta-train --profile mini [--runs a,b] # §3.3: every meta-training run the experiments use
    gramlib meta-run   --profile mini --variant coop_gram --out DIR   # one run, anywhere (no fingerprint)
    gramlib suite      --profile mini --experiment base2new [--seeds 4,5 --shots 8 --out-dir DIR]
    gramlib regulator-sweep --profile mini         # issue 15: which settings make R^phi learn (not a stage)
    gramlib probe      --profile mini              # issue 14: the world probe -> reports/world_probe.json (--out)
    gramlib index      --reports reports           # reports/README.md
    gramlib stage-config --profile mini --stage suite@base2new        # what a stage reads, resolved
    gramlib dvc-yaml                               # write dvc.yaml from gramlib/pipeline.py

Every command reads ``params.yaml`` (``--params`` for another file) and the profile named by
``--profile`` (default: the file's ``profile``). Bad input exits with status 2 and one line naming
the file, key or option; ``-v`` logs progress.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gramlib.config import REPO, Profile, get_profile, load_params

Command = Callable[[Profile, dict, argparse.Namespace], Any]


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from exc


def _compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="where units run: local (serially, here) or ray (default: params compute.backend)")
    p.add_argument("--address", default=None, help="a Ray cluster to join, e.g. auto (default: compute.address)")


def _world(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.world.build import build_world

    return {"timings": build_world(profile).get("timings")}


def _pretrain(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.clip.pretrain import pretrain_or_describe

    s = pretrain_or_describe(profile)
    return {"seconds": s.get("seconds"), "final_loss": s.get("final_loss")}


def _chc(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.chc.evaluation import REPORT_KEYS
    from gramlib.chc.stage import run_stage

    res = run_stage(profile.name)
    return {k: res.metrics.get(k) for k in REPORT_KEYS}


def _meta_train(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.compute import compute_config
    from gramlib.experiments.meta_runs import ensure_runs

    compute = compute_config(profile.name, params, backend=a.backend, address=a.address)
    return ensure_runs(profile, a.runs.split(",") if a.runs else None, compute, params)


def _meta_run(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    import dataclasses

    from gramlib.gram.meta_train import meta_train
    from gramlib.gram.run_config import meta_train_config

    cfg = meta_train_config(profile.name, a.variant, params)
    if a.steps is not None:
        cfg = dataclasses.replace(cfg, steps=a.steps)
    out = Path(a.out) if a.out else profile.artifacts / "meta" / a.variant
    res = meta_train(profile, cfg, out)
    return {k: res.summary.get(k) for k in ("train_s", "steps_per_s", "grad_cosine_start", "grad_cosine_end",
                                            "meta_loss_start", "meta_loss_end")}


def _regulator_sweep(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.experiments.regulator_sweep import run_sweep
    from gramlib.io import atomic_path

    out_dir = Path(a.out_dir) if a.out_dir else profile.artifacts / "regulator_sweep"
    table = run_sweep(profile, out_dir, a.variant, params=params)
    with atomic_path(out_dir / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return str(out_dir / "sweep.csv")


def _probe(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    import dataclasses

    from gramlib.experiments.world_probe import PROBE_KEYS, probe_config, run_probe

    cfg = probe_config(profile.name, params)
    if a.seeds is not None:  # more seeds than the stage's, e.g. to see whether its 2-seed mean is typical
        if a.out is None:
            raise ValueError("gramlib probe --seeds: give --out as well (reports/world_probe.json is the "
                             f"world_probe stage's output, over probe.seeds {list(cfg.seeds)})")
        cfg = dataclasses.replace(cfg, seeds=a.seeds)
    out = Path(a.out) if a.out else REPO / "reports" / "world_probe.json"
    res = run_probe(profile, cfg, out, params=params, threads=a.threads)
    return {**{k: round(res[k], 2) for k in PROBE_KEYS}, "bars met": {k: v["met"] for k, v in res["bars"].items()}}


def _suite(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.compute import compute_config
    from gramlib.experiments.spec import suite_config
    from gramlib.experiments.suite import run_experiment

    cfg = suite_config(profile.name, params, seeds=a.seeds, shots=a.shots)
    compute = compute_config(profile.name, params, backend=a.backend, address=a.address)
    out_dir = Path(a.out_dir) if a.out_dir else profile.artifacts / "suite"
    for exp in a.experiment:
        t0 = time.perf_counter()
        # a unit's intra-op threads: its declared CPUs (compute.unit.cpus) unless --threads says otherwise
        run_experiment(profile, cfg, exp, out_dir / f"{exp}.csv", compute=compute,
                       threads=a.threads if a.threads is not None else max(1, int(compute.unit.cpus)),
                       progress=lambda s: print(s, flush=True))
        print(f"{exp}: {time.perf_counter() - t0:.1f}s", flush=True)


def _paper_fixture(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.data.paper_fixture import build_paper_fixture

    return build_paper_fixture(Path(a.root) if a.root else profile.root, weights=not a.no_weights)


def _index(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.reporting.index import write_index

    reports = Path(a.reports) if Path(a.reports).is_absolute() else REPO / a.reports
    return str(write_index(reports))


def _stage_config(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.stage_config import check_dvc_layout, stage_config, write_stage_configs

    if a.out:
        check_dvc_layout(profile, params)
        return [str(p) for p in write_stage_configs(profile, params, Path(a.out))]
    import json

    print(json.dumps(stage_config(a.stage, profile, params), indent=2, sort_keys=True, default=str))


def _dvc_yaml(profile: Profile, params: dict, a: argparse.Namespace) -> Any:
    from gramlib.pipeline import DVC_YAML, render, write

    if a.check:
        if DVC_YAML.read_text() != render():
            raise ValueError(f"{DVC_YAML} differs from gramlib/pipeline.py: run `gramlib dvc-yaml`")
        return f"{DVC_YAML}: up to date"
    return str(write())


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    ap = argparse.ArgumentParser(prog="gramlib", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    commands: dict[str, Command] = {}

    def add(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--profile", default=None, help="a profile of params.yaml (default: its 'profile')")
        p.add_argument("--params", default=None, help="parameters file (default: params.yaml of the repository)")
        p.add_argument("-v", "--verbose", action="store_true", help="log progress")
        commands[name] = fn
        return p

    add("world", _world, "the world stage: generate the profile's world (mini/smoke), or check and describe its own data")
    p = add("paper-fixture", _paper_fixture, "write stand-ins of the paper profile's data in the real formats "
            "(CoOp's DATA/, img2dataset CC3M, ViT-B/16 weights) under --root (default: the profile's data root)")
    p.add_argument("--root", default=None)
    p.add_argument("--no-weights", action="store_true", help="skip the 300 MB random ViT-B/16 checkpoint")
    add("pretrain", _pretrain, "pre-train the profile's tiny CLIP (or check the paper backbone's weights)")
    add("chc", _chc, "cross-modal hierarchical clustering (§3.2) of the profile's web corpus")
    p = add("meta-train", _meta_train, "every meta-training run the experiments use (kept while current)")
    p.add_argument("--runs", default=None, help="comma-separated run names (default: all the suite needs)")
    _compute_args(p)
    p = add("meta-run", _meta_run, "one meta-training run of a variant (no fingerprint; for experiments by hand)")
    p.add_argument("--variant", default="coop_gram", help="a key of meta.variants")
    p.add_argument("--out", default=None, help="default: artifacts/<profile>/meta/<variant>")
    p.add_argument("--steps", type=int, default=None)
    p = add("regulator-sweep", _regulator_sweep, "meta-train a sweep of regulator settings and tabulate phi's movement (issue 15)")
    p.add_argument("--variant", default="coop_gram", help="the meta.variants entry the settings override")
    p.add_argument("--out-dir", default=None, help="default: artifacts/<profile>/regulator_sweep")
    p = add("probe", _probe, "the world probe: does the world have the paper's problem? (reports/world_probe.json)")
    p.add_argument("--out", default=None, help="default: reports/world_probe.json (a CSV per dataset beside it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=_ints, default=None,
                   help="comma-separated data seeds instead of probe.seeds (needs --out)")
    p = add("suite", _suite, "run experiments of suite.experiments (resumes finished units)")
    p.add_argument("--experiment", required=True, action="append", help="an experiment name (repeatable)")
    p.add_argument("--out-dir", default=None, help="default: artifacts/<profile>/suite")
    p.add_argument("--seeds", type=_ints, default=None, help="comma-separated; default: params.yaml seeds")
    p.add_argument("--shots", type=int, default=None, help="override the shots of experiments that follow it")
    _compute_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads per unit (default: compute.unit.cpus)")
    p = add("index", _index, "write the reports index (reports/README.md)")
    p.add_argument("--reports", default="reports")
    p = add("stage-config", _stage_config, "the resolved parameters a pipeline stage reads (JSON)")
    p.add_argument("--stage", default=None, help="a stage name, e.g. chc or suite@base2new")
    p.add_argument("--out", default=None, help="write every stage's JSON into this folder instead")
    p = add("dvc-yaml", _dvc_yaml, "write dvc.yaml from gramlib/pipeline.py (the pipeline as data)")
    p.add_argument("--check", action="store_true", help="only check that dvc.yaml is up to date")
    return ap, commands


def main(argv: Sequence[str] | None = None) -> int:
    ap, commands = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        params = load_params(a.params) if a.params else load_params()
        profile = get_profile(a.profile, params=params, **({"path": a.params} if a.params else {}))
        result = commands[a.command](profile, params, a)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(result)
    print(f"{a.command}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
