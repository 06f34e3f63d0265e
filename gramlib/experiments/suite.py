"""The experiments behind Tables 1-7 and Figures 1 and 3: named methods x protocols x seeds.

A *method* is a row label of the paper's tables (``CoOp``, ``CoOp+GRAM``, ``-gradient regulating``,
...) mapped to how it is obtained (params.yaml ``suite.methods``):

* ``learner`` (+ ``learner_opts``): a prompt learner tuned plainly from its default initialisation;
* ``meta``: a meta-training run (``artifacts/<profile>/meta/<variant>``): the learner, its config
  and the initialisation θ* come from that run, and the few-shot tuning uses the meta-learned
  gradient regulator R^φ* (eq. 7 at test time), or the raw gradient for runs without one;
* ``init_seed``: seeds the random prompt initialisation apart from the data seed (Figure 1a).

An *experiment* (``suite.experiments``) is a protocol, a shot count, a list of methods, seeds and
optional overrides (epochs, evaluation frequency). ``transfer`` trains once on the source dataset and
evaluates on its shifted variants (rows labelled ``cross_domain``) and on every other dataset
(``cross_dataset``): Tables 2 and 3 (or 4 and 5) come from the same runs, as in the paper.

Units (method, seed, dataset) run through :mod:`gramlib.compute`: serially in this process
(``compute.backend: local``) or as Ray tasks with one torch thread each (``ray``: a local cluster or a
remote one), largest first. Only this process writes: the rows of a finished unit are appended to the
output CSV when its result arrives and its key to ``<out>.units.json``, so a killed run resumes where
it stopped, and a worker killed mid-unit (Ray re-runs its task) neither loses nor duplicates a row.

CLI::

    gramlib suite --profile mini --experiment base2new [--seeds 4,5,6 --shots 8 --out-dir DIR]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gramlib.compute import ComputeConfig, compute_config, map_units
from gramlib.config import Profile, get_profile, load_params
from gramlib.experiments.spec import Experiment, MethodSpec, SuiteConfig, experiment_runs, suite_config
from gramlib.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# units


@dataclass(frozen=True)
class Unit:
    """One training run: a method, a data seed and (base2new) a dataset."""

    experiment: str
    protocol: str
    method: str
    seed: int
    shots: int
    dataset: str  # base2new: the dataset; transfer: the source

    @property
    def key(self) -> str:
        return unit_key(self.protocol, self.method, self.seed, self.shots, self.dataset)


def unit_key(protocol: Any, method: Any, seed: Any, shots: Any, dataset: Any) -> str:
    """The identity of a unit in the ``.units.json`` done-list (works on scalars and pandas columns)."""
    return protocol + "|" + method + "|" + _str(seed) + "|" + _str(shots) + "|" + dataset


def _str(x: Any) -> Any:
    return x.astype(str) if hasattr(x, "astype") else str(x)


def units(profile: Profile, exp: Experiment) -> list[Unit]:
    """Every (method, seed, dataset) of the experiment, seed-major."""
    datasets = (exp.datasets or tuple(profile.datasets)) if exp.protocol == "base2new" else (profile.source,)
    return [Unit(exp.name, exp.protocol, m, s, exp.shots, d) for s in exp.seeds for m in exp.methods for d in datasets]


def in_unit_order(rows: pd.DataFrame, profile: Profile, exp: Experiment) -> pd.DataFrame:
    """``rows`` sorted by their unit's place in :func:`units` (a stable sort: a unit's own rows keep
    their order). Parallel workers append units as they finish, so the file's order is the
    machine's timing; tables and figures that group with ``sort=False`` must not inherit it."""
    if rows.empty:
        return rows
    order = {(u.method, str(u.seed), u.dataset if exp.protocol == "base2new" else ""): i
             for i, u in enumerate(units(profile, exp))}
    target = rows["dataset"].astype(str) if exp.protocol == "base2new" else pd.Series("", index=rows.index)
    keys = zip(rows["method"].astype(str), rows["seed"].astype(str), target)
    rank = pd.Series([order.get(k, len(order)) for k in keys], index=rows.index)
    return rows.loc[rank.sort_values(kind="stable").index].reset_index(drop=True)


def meta_dir(profile: Profile, variant: str) -> Path:
    return profile.artifacts / "meta" / variant


def resolve(profile: Profile, spec: MethodSpec, seed: int = 1) -> tuple[str, dict[str, Any], dict | None, Callable | None]:
    """(learner name, learner options, θ init or None, gradient hook or None) of a method at data seed ``seed``
    (a ``meta_seeds: paired`` method tunes seed s from meta-training run s)."""
    if spec.meta is None:
        return spec.learner, dict(spec.learner_opts), None, None
    from gramlib.gram.test_time import load_meta_result, regulator_hook

    from gramlib.gram.run_config import initial_learner_options

    res = load_meta_result(meta_dir(profile, spec.meta_run(seed)))
    if spec.theta == "hand":  # the learner's own start, tuned with the run's R^φ* (or without)
        opts, theta0 = initial_learner_options(res.cfg.learner, res.cfg.learner_cfg, "learner"), None
    else:
        opts, theta0 = res.cfg.learner_options(), res.theta
    hook = regulator_hook(res.phi, res.regulator) if spec.regulator == "meta" else None
    return res.cfg.learner, opts, theta0, hook


SHIFT_COLUMNS = ["protocol", "dataset", "method", "seed", "shots", "split", "tower", "layer", "norm",
                 "n_images", "n_classes", "profile", "git_commit"]


def shift_rows(env: Any, unit: Unit, target: Any, n_images: int) -> tuple[Callable[[Any, dict], None], list[dict[str, Any]]]:
    """A ``run_unit`` ``on_final`` hook and the list it fills: per-layer ‖Ω_l‖_F (RESTORE eq. 6) of the
    final prompts, on ``n_images`` evenly spaced test images of ``target`` and all its class names."""
    import numpy as np
    import torch

    from gramlib.clip.features import eval_transform
    from gramlib.data.transforms import load_image
    from gramlib.restore import feature_shift_norms

    out: list[dict[str, Any]] = []
    items = target.data
    idx = sorted({int(i) for i in np.linspace(0, len(items) - 1, min(n_images, len(items)))})

    def hook(learner: Any, theta: dict) -> None:
        tf = eval_transform(env.backbone)
        images = torch.stack([tf(load_image(items[i].impath)) for i in idx]).to(learner.device)
        with torch.no_grad():
            norms = feature_shift_norms(learner, theta, images, target.classnames)
        base = {"protocol": unit.protocol, "dataset": unit.dataset, "method": unit.method, "seed": unit.seed,
                "shots": unit.shots, "split": target.split, "n_images": len(idx),
                "n_classes": len(target.classnames), "profile": env.profile.name, "git_commit": env.commit}
        for tower, v in norms.items():
            out.extend({**base, "tower": tower, "layer": i, "norm": float(x)} for i, x in enumerate(v.tolist()))
        if hasattr(learner, "surgery_strength"):  # RESTORE: ‖α·Surgery(x̃)‖/‖x̃‖ per tower, "layer" -1
            for tower, v in learner.surgery_strength(theta, images, target.classnames).items():
                out.append({**base, "tower": f"{tower}_surgery", "layer": -1, "norm": v})

    return hook, out


def run_suite_unit(env: Any, cfg: SuiteConfig, unit: Unit) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and evaluate one unit in this process; returns its tidy rows (gramlib.experiments.protocols.COLUMNS)
    and, for experiments with ``feature_shift``, its feature-shift rows (SHIFT_COLUMNS)."""
    from gramlib.experiments.protocols import label_transfer, run_unit, unit_data
    from gramlib.tuning.recipe import TrainConfig

    prof = env.profile
    exp = cfg.experiment(unit.experiment)
    spec = cfg.methods[unit.method]
    learner, opts, theta0, hook = resolve(prof, spec, unit.seed)
    train = dict(cfg.train.get(learner) or {})
    if exp.epochs is not None:
        train["epochs"] = exp.epochs
    epochs = train.get("epochs") or TrainConfig.for_learner(learner).epochs
    train["eval_every"] = 1 if unit.method in exp.curves else (exp.eval_every or epochs)
    train_set, targets = unit_data(env, unit.protocol, unit.dataset, unit.shots, unit.seed, train_split=exp.train_split)
    on_final, shifts = shift_rows(env, unit, targets[1], exp.shift_images) if exp.feature_shift else (None, [])
    rows = run_unit(env, unit.protocol, unit.method, unit.seed, unit.shots,
                    None if learner == "zeroshot" else train_set, targets, hook,
                    learner_name=learner, learner_opts=opts, theta_init=theta0, init_seed=spec.init_seed,
                    train=train, policy=cfg.augment, lr_translation=cfg.lr_translation, on_final=on_final)
    return (label_transfer(rows, prof) if unit.protocol == "transfer" else rows), shifts


# ------------------------------------------------------------------------------------------------
# execution (gramlib.compute) with resume

_ENV: Any = None  # the worker's environment (backbone, datasets), loaded once per process
_MACHINE: dict[str, Any] = {}  # the worker's machine record (provenance: where a unit's numbers come from)


def _worker_init(profile: Profile, threads: int) -> None:
    import torch

    global _ENV, _MACHINE
    torch.set_num_threads(threads)
    from gramlib.experiments.protocols import load_env
    from gramlib.reporting.provenance import machine_info

    _ENV = load_env(profile)
    _MACHINE = machine_info()  # torch_threads == threads: each worker runs with ``threads`` intra-op threads


def _worker_run(job: tuple[SuiteConfig, Unit]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, dict[str, Any]]:
    cfg, unit = job
    t0 = time.perf_counter()
    rows, shifts = run_suite_unit(_ENV, cfg, unit)
    return rows, shifts, time.perf_counter() - t0, _MACHINE


# relative CPU cost of one unit by learner (mini profile, measured): image-side learners run the image
# tower every step; CoOp-type learners tune on cached image features
_UNIT_COST = {"zeroshot": 0.05, "coop": 1.0, "cocoop": 20.0, "vpt": 4.0, "vpt_deep": 4.0, "joint": 4.0,
              "ivlp": 4.0, "maple": 4.0, "restore": 6.0}
_CURVE_COST = 1.75  # an image-side unit evaluated every epoch (Figure 3a): measured 12.9 s vs 7.3 s


def unit_learner(profile_name: str, cfg: SuiteConfig, method: str, params: dict | None = None) -> str:
    """The learner a method tunes: its own, or the one of the meta-training run that initialises it."""
    spec = cfg.methods[method]
    if spec.learner is not None:
        return spec.learner
    from gramlib.experiments.spec import PRETRAIN_SUFFIX
    from gramlib.gram.run_config import meta_train_config
    from gramlib.gram.run_names import split_run

    # "<variant>_pretrain" is the prompt pre-training ablation of <variant>: the same learner (any seed)
    return meta_train_config(profile_name, split_run(spec.meta)[0].removesuffix(PRETRAIN_SUFFIX), params).learner


def longest_first(todo: list[Unit], cfg: SuiteConfig, profile_name: str, params: dict | None = None) -> list[Unit]:
    """Units ordered by expected cost, largest first (stable): with several workers the last unit
    to finish is a short one, so the stage's tail is not one worker idling beside a long unit."""
    from gramlib.learners import tunes_image_tower

    params = load_params() if params is None else params
    learners = {m: unit_learner(profile_name, cfg, m, params) for m in {u.method for u in todo}}

    def cost(u: Unit) -> float:
        learner = learners[u.method]
        exp = cfg.experiments.get(u.experiment)
        curve = tunes_image_tower(learner) and exp is not None and u.method in exp.curves
        return _UNIT_COST.get(learner, 1.0) * (_CURVE_COST if curve else 1.0)

    costs = {u.key: cost(u) for u in todo}
    return sorted(todo, key=lambda u: -costs[u.key])


def done_path(out: Path) -> Path:
    return out.with_name(out.name + ".units.json")


def shifts_path(out: Path) -> Path:
    """The feature-shift rows beside an experiment's CSV (header only when it measures none)."""
    return out.with_name(out.stem + ".shifts.csv")


def read_shifts(out: str | os.PathLike) -> pd.DataFrame:
    """Feature-shift rows of the finished units of ``out`` (a unit re-run after a kill counts once)."""
    out = Path(out)
    p = shifts_path(out)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no feature-shift rows (run the experiment first)")
    df = pd.read_csv(p)
    done = read_done(out)
    df = df[unit_key(df["protocol"], df["method"], df["seed"], df["shots"], df["dataset"]).isin(done)]
    return df.drop_duplicates(["protocol", "dataset", "method", "seed", "shots", "split", "tower", "layer"], keep="last")


def read_done(out: Path, fingerprint: str | None = None) -> set[str]:
    """The finished units of ``out``; none when ``fingerprint`` is given and the file's differs."""
    p = done_path(out)
    if not (out.exists() and p.exists()):
        return set()
    record = read_json(p)
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        return set()
    return set(record.get("done", []))


def read_machines(out: Path) -> list[dict[str, Any]]:
    """The machines (:func:`gramlib.reporting.provenance.machine_info`) that computed ``out``'s units."""
    p = done_path(out)
    return list(read_json(p).get("machines", [])) if (out.exists() and p.exists()) else []


#: the modules a unit runs (its code fingerprint: the import closure)
UNIT_MODULES = ("gramlib.experiments.suite",)


def experiment_fingerprint(profile: Profile, cfg: SuiteConfig, name: str) -> dict[str, Any]:
    """What an experiment's rows depend on: its resolved settings, methods and recipes, the code, the
    backbone, the meta-training runs it uses and the data; a units file of another fingerprint is stale.

    Why: the suite stages persist their rows across ``dvc repro`` (a killed stage resumes its finished
    units), so a stage rerun after an edit must not keep rows computed before it.
    """
    from gramlib.clip.pretrain import backbone_dir
    from gramlib.code_deps import code_hash
    from gramlib.io import file_hash

    exp = cfg.experiment(name)
    learners = {unit_learner(profile.name, cfg, m) for m in exp.methods}
    metas = sorted(experiment_runs(cfg, exp))
    bdir = backbone_dir(profile)
    coop = profile.root / profile.coop_dir
    listing = sorted((str(f.relative_to(coop)), f.stat().st_size) for f in coop.rglob("*") if f.is_file()) \
        if coop.exists() else []
    return {
        "experiment": dataclasses.asdict(exp),
        "methods": {m: dataclasses.asdict(cfg.methods[m]) for m in exp.methods},
        "train": {k: cfg.train[k] for k in sorted(learners) if k in cfg.train},
        "lr_translation": cfg.lr_translation,
        "profile": {"name": profile.name, "datasets": list(profile.datasets), "source": profile.source,
                    "variants": list(profile.variants)},
        "code": code_hash(UNIT_MODULES),
        "backbone": {f.name: file_hash(f) for f in sorted(bdir.glob("*.safetensors"))} if bdir.exists() else {},
        "meta": {r: (read_json(p) if (p := meta_dir(profile, r) / "fingerprint.json").exists() else None) for r in metas},
        "data": stable_hash(listing),
    }


def run_experiment(profile: Profile, cfg: SuiteConfig, name: str, out: str | os.PathLike, *,
                   compute: ComputeConfig | None = None, threads: int = 1,
                   progress: Callable[[str], None] | None = print) -> pd.DataFrame:
    """Run every unit of experiment ``name`` not yet in ``out``; returns all rows of ``out``.

    ``compute``: where the units run (default: the profile's ``compute`` block)."""
    from gramlib.experiments.protocols import COLUMNS, append_rows

    exp = cfg.experiment(name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for m in exp.methods:  # fail before any training when a meta run is missing
        for seed in exp.seeds:
            if (run := cfg.methods[m].meta_run(seed)) is not None:
                d = meta_dir(profile, run)
                if not (d / "theta_star.safetensors").exists():
                    raise FileNotFoundError(f"method {m!r} (seed {seed}) needs the meta-training run {d}: run the stage "
                                            "meta_train (gramlib meta-train)")
    fp = stable_hash(experiment_fingerprint(profile, cfg, name))
    done = read_done(out, fp)
    if not done:  # rows without a units file, or of another configuration, code or inputs: start over
        out.unlink(missing_ok=True)
        shifts_path(out).unlink(missing_ok=True)
    todo = [u for u in units(profile, exp) if u.key not in done]
    todo = longest_first(todo, cfg, profile.name)
    machines = read_machines(out) if done else []  # each unit's result adds its worker's machine
    compute = compute if compute is not None else compute_config(profile.name)
    say = progress or (lambda s: None)
    say(f"{name}: {len(todo)} units to run ({len(done)} done), backend {compute.backend}"
        + (f" ({compute.address or 'local cluster'})" if compute.backend == "ray" else ""))

    def record(job: tuple[SuiteConfig, Unit], result: tuple[list[dict[str, Any]], list[dict[str, Any]], float, dict]) -> None:
        unit, (rows, shifts, secs, machine) = job[1], result
        if unit.key in done:  # cannot happen (one result per unit); guards the exactly-once promise
            raise RuntimeError(f"unit {unit.key} reported twice")
        if machine not in machines:
            machines.append(machine)
        if shifts:
            append_rows(shifts_path(out), shifts, columns=SHIFT_COLUMNS)
        append_rows(out, rows)
        done.add(unit.key)
        write_json(done_path(out), {"experiment": name, "fingerprint": fp, "done": sorted(done), "machines": machines})
        last = max(r["epoch"] for r in rows)
        seen: dict[str, float] = {}
        for r in rows:
            if r["epoch"] == last:
                seen[f"{r['dataset']}/{r['split']}"] = r["accuracy"]
        accs = ", ".join(f"{k}={v:.1f}" for k, v in seen.items())
        say(f"  {time.strftime('%H:%M:%S')} {unit.method} seed={unit.seed} {unit.dataset} ({secs:.1f}s): {accs[:160]}")

    # a failed unit raises in map_units; the units recorded before it are kept
    map_units(_worker_run, [(cfg, u) for u in todo], record, compute, setup=_worker_init, setup_args=(profile, threads),
              resources=compute.unit)
    if not shifts_path(out).exists():
        pd.DataFrame(columns=SHIFT_COLUMNS).to_csv(shifts_path(out), index=False)
    if not out.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(out)


def results_path(profile: Profile, exp: Experiment, default: Experiment | None = None) -> Path:
    """Where an experiment's rows live: the DVC stage's CSV, or a suffixed one for other seeds/shots."""
    base = profile.artifacts / "suite"
    if default is None or (exp.seeds == default.seeds and exp.shots == default.shots):
        return base / f"{exp.name}.csv"
    seeds = "-".join(str(s) for s in exp.seeds)
    return base / f"{exp.name}_{exp.shots}shot_seeds{seeds}.csv"


def unit_runtime(rows: pd.DataFrame) -> float:
    """Training seconds behind ``rows``: per unit, its runtime at the last epoch (zero-shot: eval time).

    A base-to-new unit is one dataset; a transfer unit is one source training whose rows appear under
    both cross_domain and cross_dataset, so it is counted once (from its cross_domain rows).
    """
    if rows.empty:
        return 0.0
    b2n = rows[rows["protocol"] == "base2new"]
    xd = rows[rows["protocol"] == "cross_domain"]
    t = b2n.groupby(["method", "seed", "shots", "dataset"])["runtime_s"].max().sum()
    t += xd.groupby(["method", "seed", "shots"])["runtime_s"].max().sum()
    return float(t)


def _experiment_at(profile: Profile | str, name: str, seeds: Sequence[int] | None, shots: int | None,
                   params: dict | None) -> tuple[Profile, SuiteConfig, Experiment, Path]:
    """The profile, config, experiment and CSV path that these seeds and shots resolve to."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    params = load_params() if params is None else params
    default = suite_config(prof.name, params).experiment(name)
    cfg = suite_config(prof.name, params, seeds=seeds, shots=shots)
    exp = cfg.experiment(name)
    if seeds is not None and default.seeds != tuple(seeds) and len(default.seeds) == 1:
        exp = dataclasses.replace(exp, seeds=default.seeds)  # a pinned single seed (Figure 1a) stays
    return prof, cfg, exp, results_path(prof, exp, default)


def experiment_shifts(profile: Profile | str, name: str, *, seeds: Sequence[int] | None = None,
                      shots: int | None = None, params: dict | None = None) -> pd.DataFrame:
    """The feature-shift rows (SHIFT_COLUMNS) of an experiment run with ``feature_shift``; call
    :func:`experiment_rows` first (it runs missing units when asked)."""
    prof, cfg, exp, path = _experiment_at(profile, name, seeds, shots, params)
    if not exp.feature_shift:
        raise ValueError(f"experiment {name!r} does not measure feature shifts (suite.experiments.{name}.feature_shift)")
    return in_unit_order(read_shifts(path), prof, exp)


def experiment_rows(profile: Profile | str, name: str, *, seeds: Sequence[int] | None = None,
                    shots: int | None = None, run: bool = False, compute: ComputeConfig | None = None,
                    params: dict | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of one experiment and their provenance stamp, for the table and figure notebooks.

    With the default seeds and shots this reads the DVC stage's CSV (``run=True`` first runs any
    missing unit); other seeds or shots (Papermill ``-p seeds``/``-p shots``) go to their own CSV
    and are run when ``run`` is true.
    """
    prof, cfg, exp, path = _experiment_at(profile, name, seeds, shots, params)
    complete = read_done(path) >= {u.key for u in units(prof, exp)}
    if run and not complete:
        run_experiment(prof, dataclasses.replace(cfg, experiments={**cfg.experiments, name: exp}), name, path,
                       compute=compute)
    elif not complete:
        hint = (f"dvc repro suite@{name}" if path == results_path(prof, exp)
                else f"run=True (gramlib suite --experiment {name} with these seeds/shots)")
        raise FileNotFoundError(f"{path}: the experiment {name!r} has not (fully) run; use {hint}")
    rows = in_unit_order(pd.read_csv(path), prof, exp)
    commits = sorted(set(rows["git_commit"].astype(str)))
    from gramlib.reporting.provenance import git_commit

    g = git_commit()
    stamp = {"profile": prof.name, "experiment": name, "protocol": exp.protocol, "seeds": list(exp.seeds),
             "shots": exp.shots, "methods": list(exp.methods), "epochs": exp.epochs,
             "results": str(path.relative_to(prof.artifacts.parent.parent)) if path.is_relative_to(prof.artifacts.parent.parent) else str(path),
             "result_commits": commits, "commit": g["commit"], "dirty": g["dirty"],
             "runtime_s": round(unit_runtime(rows), 1), "machines": read_machines(path),
             "suite_params": {"train": cfg.train, "augment": cfg.augment, "lr_translation": cfg.lr_translation, "methods": {m: dataclasses.asdict(cfg.methods[m]) for m in exp.methods}}}
    return rows, stamp

__all__ = ["SHIFT_COLUMNS", "Experiment", "MethodSpec", "SuiteConfig", "Unit", "experiment_rows", "experiment_shifts",
           "in_unit_order", "longest_first", "read_machines", "read_shifts", "unit_key", "unit_learner", "resolve", "results_path", "shift_rows", "shifts_path",
           "run_experiment", "run_suite_unit", "suite_config", "unit_runtime", "units"]
