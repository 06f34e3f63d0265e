"""What each pipeline stage reads from params.yaml, resolved for one profile, as one JSON file per stage.

Why not DVC's ``params:`` lists: a stage reads a *resolved* view (the base section with the profile's
overlay merged over it, only the methods and learners its experiment uses, the meta-training runs its
tables need), which no static list of keys can name. So the ``stage_config`` stage (deps: every key
of params.yaml) writes ``artifacts/<profile>/config/<stage>.json``, and every other stage depends on
its own file: editing one method's options reruns exactly the experiments that use it, a profile's
overlay reruns only that profile's stages, and a parameter nothing reads reruns nothing.

The JSON holds what changes results, not how fast they come (``workers``, ``threads`` are left out).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gramlib.config import Profile, load_params
from gramlib.io import json_default, write_text


def _asdict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def world(profile: Profile, params: dict) -> dict:
    out = {"world": _asdict(profile.world), "data_root": profile.data_root}
    if profile.world is None:  # a profile with its own data: the world stage checks these datasets
        out.update(datasets=list(profile.datasets), variants=list(profile.variants), source=profile.source,
                   coop_dir=profile.coop_dir, cc3m_dir=profile.cc3m_dir)
    return out


def check_dvc_layout(profile: Profile, params: dict) -> None:
    """The paths dvc.yaml reads and writes for the profile, checked before any stage runs.

    DVC interpolates one level (``${profile}``, ``${reports}``), not a profile's own keys, so the
    pipeline reads ``data/<profile>/`` and writes ``<reports>/``: a profile whose ``data_root`` is elsewhere
    would run on one folder while DVC tracks another, and a profile other than mini writing to ``reports/``
    would overwrite the mini profile's committed reports.
    """
    expected = f"data/{profile.name}"
    if Path(profile.data_root).as_posix().rstrip("/") != expected:
        raise ValueError(f"profiles.{profile.name}.data_root is {profile.data_root!r}, but the DVC pipeline reads "
                         f"{expected}/ (dvc.yaml's data/${{profile}}): set it to {expected!r} and put the data there "
                         "(a symlink to another disk works)")
    reports = Path(str(params.get("reports", "reports"))).as_posix().rstrip("/")
    wanted = "reports" if profile.name == "mini" else f"reports/{profile.name}"
    if reports != wanted:
        raise ValueError(f"params.yaml: reports is {reports!r} for profile {profile.name!r}; set it to {wanted!r} "
                         "(each profile writes its own reports; reports/ holds the mini profile's), e.g. "
                         f"dvc exp run -S profile={profile.name} -S reports={wanted}")


def backbone(profile: Profile, params: dict) -> dict:
    return {"backbone": _asdict(profile.backbone)}


def chc(profile: Profile, params: dict) -> dict:
    from gramlib.chc.stage import chc_config, extraction_config, text_config

    return {"chc": _asdict(chc_config(profile.name, params)), "text": _asdict(text_config(profile.name, params)),
            "extraction": _asdict(extraction_config(profile.name, params))}


def meta_train(profile: Profile, params: dict) -> dict:
    """Every meta-training run the experiments use, with its resolved configuration."""
    from gramlib.experiments.meta_runs import required_runs, run_config

    runs = {}
    for name in required_runs(profile.name, params):
        kind, cfg = run_config(profile, name, params)
        runs[name] = {"kind": kind, "config": cfg}
    return {"runs": runs, "source": profile.source}


def tasks(profile: Profile, params: dict) -> dict:
    """The task sampler's settings of the CoOp+GRAM run (notebook 02 draws tasks with them)."""
    from gramlib.gram.run_config import meta_train_config

    return {"tasks": _asdict(meta_train_config(profile.name, "coop_gram", params).tasks)}


def world_probe(profile: Profile, params: dict) -> dict:
    """The probe's settings, the datasets it reads and CoOp's recipe on this profile (its training runs)."""
    from gramlib.experiments.spec import suite_config
    from gramlib.experiments.world_probe import probe_config

    cfg = probe_config(profile.name, params)
    suite = suite_config(profile.name, params)
    return {"probe": _asdict(cfg), "datasets": list(cfg.datasets or profile.datasets),
            "coop_train": suite.train.get("coop", {}), "augment": suite.augment,
            "lr_translation": suite.lr_translation}


def tables(profile: Profile, params: dict) -> dict:
    """The tables' row lists (Tables 6, 7, RESTORE's ablations, the meta-seed spread)."""
    from gramlib.experiments.spec import suite_config

    return {"tables": {k: list(v) for k, v in suite_config(profile.name, params).tables.items()}}


def experiment(name: str) -> Callable[[Profile, dict], dict]:
    """One experiment: its resolved settings, the methods it runs and the training recipe of their learners."""

    def resolve(profile: Profile, params: dict) -> dict:
        from gramlib.experiments.spec import suite_config

        cfg = suite_config(profile.name, params)
        exp = cfg.experiment(name)
        methods = {m: _asdict(cfg.methods[m]) for m in exp.methods}
        learners = {spec["learner"] for spec in methods.values() if spec["learner"]}
        learners |= {_meta_learner(profile, spec["meta"], params) for spec in methods.values() if spec["meta"]}
        return {"experiment": _asdict(exp), "methods": methods,
                "train": {k: v for k, v in sorted(cfg.train.items()) if k in learners}, "augment": cfg.augment,
                "lr_translation": cfg.lr_translation,
                "datasets": list(profile.datasets), "source": profile.source, "variants": list(profile.variants)}

    return resolve


def _meta_learner(profile: Profile, run: str, params: dict) -> str:
    from gramlib.experiments.meta_runs import run_config

    return run_config(profile, run, params)[1]["learner"]


def stages(profile: Profile, params: dict) -> dict[str, Callable[[Profile, dict], dict]]:
    """Stage name (as in dvc.yaml) -> the function that resolves what it reads."""
    from gramlib.experiments.spec import suite_config

    out: dict[str, Callable[[Profile, dict], dict]] = {
        "world": world, "backbone": backbone, "chc": chc, "meta_train": meta_train, "tasks": tasks, "tables": tables,
        "world_probe": world_probe}
    for name in suite_config(profile.name, params).experiments:
        out[f"suite@{name}"] = experiment(name)
    return out


def stage_config(stage: str | None, profile: Profile, params: dict | None = None) -> dict:
    """The resolved parameters of one stage (all stages when ``stage`` is None)."""
    params = load_params() if params is None else params
    table = stages(profile, params)
    if stage is None:
        return {name: fn(profile, params) for name, fn in table.items()}
    if stage not in table:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(table)}")
    return table[stage](profile, params)


def write_stage_configs(profile: Profile, params: dict | None, out_dir: Path) -> list[Path]:
    """``<out_dir>/<stage>.json`` for every stage; files of stages that no longer exist are removed."""
    params = load_params() if params is None else params
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cfg in stage_config(None, profile, params).items():
        path = out_dir / f"{name}.json"
        text = json.dumps({"profile": profile.name, "stage": name, "params": cfg}, indent=2, sort_keys=True,
                          default=json_default) + "\n"
        if not path.exists() or path.read_text() != text:
            write_text(path, text)
        written.append(path)
    for stale in set(out_dir.glob("*.json")) - set(written):
        stale.unlink()
    return written
