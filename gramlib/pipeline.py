"""The DVC pipeline as data: ``gramlib dvc-yaml`` writes dvc.yaml from this module, so it cannot go stale.

Why generated: every stage must depend on all the code it imports and on nothing else, and DVC's
templating cannot interpolate a list (``deps: ${item.deps}`` -> "Cannot interpolate data of type
'list'"), so neither the per-stage code lists nor the notebook stages (each with its own inputs and
outputs) can be a DVC ``foreach``. Here they are a loop: code deps come from the import closure of
each stage's modules (:mod:`gramlib.code_deps`), parameters from the stage's resolved-config file
(:mod:`gramlib.stage_config`), and tests/test_pipeline_graph.py fails when the committed dvc.yaml
differs from what this module generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gramlib.code_deps import REPO, code_files, compact, notebook_modules

P = "${profile}"
R = "${reports}"  # params.yaml's `reports`: reports/ for mini, reports/<profile>/ for any other (checked by stage_config)
DATA = f"data/{P}"
WORLD = f"{DATA}/world.json"
ART = f"artifacts/{P}"
CFG = f"{ART}/config"
SUITE = f"{ART}/suite"
DVC_YAML = REPO / "dvc.yaml"


@dataclass(frozen=True)
class Stage:
    """A command stage: ``gramlib <command>`` with the modules it runs and what it reads and writes."""

    name: str
    cmd: str
    modules: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()  # stage-config files (artifacts/<profile>/config/<name>.json)
    outs: tuple[Any, ...] = ()
    params: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True)
class Notebook:
    """A notebook run by Papermill; ``args`` are extra ``-p name value`` parameters."""

    name: str
    notebook: str
    inputs: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    args: tuple[tuple[str, str], ...] = ()
    per_profile: bool = True  # False: the notebook reads no profile (the paper audit)

    @property
    def executed(self) -> str:
        """Papermill's executed copy: committed beside the profile's tables (issue 19), normalised."""
        stem = Path(self.notebook).stem + "".join(f"_{v}" for k, v in self.args if k == "table")
        return (f"{R}/notebooks/" if self.per_profile else "reports/notebooks/") + f"{stem}.ipynb"


def _table_outs(*names: str) -> tuple[str, ...]:
    return tuple(f"{R}/tables/{n}.{ext}" for n in names for ext in ("csv", "md", "provenance.json"))


def _figure_outs(*names: str) -> tuple[str, ...]:
    return tuple(f"{R}/figures/{n}.{ext}" for n in names for ext in ("png", "provenance.json"))


EXPERIMENTS = ("base2new", "transfer16", "transfer4", "overfit", "init_spread", "restore", "restore_ablations")

STAGES: tuple[Stage, ...] = (
    Stage("stage_config", f"gramlib stage-config --profile {P} --out {CFG}", ("gramlib.cli", "gramlib.stage_config"),
          params=("params.yaml:",), outs=({CFG: {"cache": False}},),
          comment="what every stage reads, resolved for the profile (deps: all of params.yaml)"),
    Stage("world", f"gramlib world --profile {P}", ("gramlib.cli", "gramlib.world.build"),
          inputs=("data/spec",), configs=("world",),
          outs=({WORLD: {"cache": False}},),
          comment="a generated profile (mini, smoke): its world, regenerated deterministically from data/spec, and "
                  "world.json with a digest of every corpus; a profile with its own data (paper): the layout "
                  "checked and described. Later stages depend on world.json and on data/<profile>/{coop,cc3m}"),
    Stage("backbone", f"gramlib pretrain --profile {P}", ("gramlib.cli", "gramlib.clip.pretrain"),
          inputs=(WORLD,), configs=("backbone",), outs=(f"{ART}/backbone",)),
    Stage("chc", f"gramlib chc --profile {P}", ("gramlib.cli", "gramlib.chc.stage"),
          inputs=(f"{DATA}/cc3m", WORLD, f"{ART}/backbone"), configs=("chc",),
          outs=(f"{ART}/chc",)),
    Stage("world_probe", f"gramlib probe --profile {P} --out {R}/world_probe.json", ("gramlib.cli", "gramlib.experiments.world_probe"),
          inputs=(f"{DATA}/coop", WORLD, f"{ART}/backbone"), configs=("world_probe",),
          outs=({f"{R}/world_probe.json": {"cache": False}}, {f"{R}/world_probe.csv": {"cache": False}}),
          comment="does the world have the paper's problem (CoOp gains on base, loses on new)? issue 14's probe"),
    Stage("meta_train", f"gramlib meta-train --profile {P}", ("gramlib.cli", "gramlib.experiments.meta_runs"),
          inputs=(f"{ART}/chc/pairs.parquet", f"{ART}/backbone", f"{DATA}/coop"), configs=("meta_train",),
          outs=({f"{ART}/meta": {"persist": True}},),
          comment="every meta-training run the experiments use: a run whose fingerprint is unchanged is kept, "
                  "a killed one resumes (persist)"),
)

SUITE_STAGE = Stage(
    "suite", f"gramlib suite --profile {P} --experiment ${{item}}", ("gramlib.cli", "gramlib.experiments.suite"),
    inputs=(f"{DATA}/coop", f"{ART}/backbone", f"{ART}/meta"), configs=("suite@${item}",),
    outs=tuple({f"{SUITE}/${{item}}{ext}": {"persist": True}} for ext in (".csv", ".csv.units.json", ".shifts.csv")),
    comment="one experiment of suite.experiments; persist: a killed stage resumes its finished units "
            "(the units file carries the experiment's fingerprint, so stale rows are never kept)")

NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("mini_world", "00_mini_world.ipynb", (WORLD, f"{DATA}/coop", f"{DATA}/cc3m", f"{ART}/backbone"),
             ("world", "backbone"),
             (f"{R}/zero_shot.csv", f"{R}/zero_shot.provenance.json")
             + tuple(f"{R}/figures/mini_world_{n}.png" for n in ("grid", "stats", "pretraining", "zero_shot"))),
    Notebook("chc_nb", "01_chc.ipynb", (f"{ART}/chc", WORLD), ("chc",), (f"{R}/chc",), (("rerun", "False"),)),
    Notebook("tasks_nb", "02_tasks.ipynb", (f"{ART}/chc/pairs.parquet",), ("tasks",),
             (f"{R}/meta/task_domain_shift.png", f"{R}/meta/task_no_shift.png", f"{R}/meta/task_stats.json"),
             (("seed", "1"),)),
    Notebook("meta_training_nb", "03_meta_training.ipynb",
             (f"{ART}/meta/coop_gram", f"{ART}/backbone", f"{ART}/chc/pairs.parquet", f"{DATA}/cc3m", f"{DATA}/coop",
              f"{SUITE}/base2new.csv"),
             ("meta_train", "suite@base2new"),
             (f"{R}/meta/meta_training_curves.png", f"{R}/meta/grad_cosine_variants.png", f"{R}/meta/metrics.json",
              f"{R}/meta/regulator_effect.csv", f"{R}/meta/ablation_glance.csv"),
             (("seed", "1"),)),
    Notebook("table1_nb", "10_table1_base_to_new.ipynb", (f"{SUITE}/base2new.csv",), ("suite@base2new", "tables"),
             _table_outs("table1_base_to_new", "table1_meta_seeds")),
    *(Notebook(f"{t}_nb", "11_transfer_tables.ipynb", (f"{SUITE}/{exp}.csv",), (f"suite@{exp}",), _table_outs(out),
               (("table", t),))
      for t, exp, out in (("table2", "transfer16", "table2_cross_domain"), ("table3", "transfer16", "table3_cross_dataset"),
                          ("table4", "transfer4", "table4_cross_domain_4shot"),
                          ("table5", "transfer4", "table5_cross_dataset_4shot"))),
    Notebook("table6_nb", "15_table6_ablations.ipynb", (f"{SUITE}/base2new.csv",), ("suite@base2new", "tables"),
             _table_outs("table6_ablations")),
    Notebook("table7_nb", "16_table7_prompt_tokens.ipynb", (f"{SUITE}/base2new.csv",), ("suite@base2new", "tables"),
             _table_outs("table7_prompt_tokens")),
    Notebook("restore_nb", "17_restore.ipynb",
             tuple(f"{SUITE}/{n}" for n in ("base2new.csv", "restore.csv", "restore_ablations.csv", "restore.shifts.csv",
                                             "restore_ablations.shifts.csv")),
             ("suite@base2new", "suite@restore", "suite@restore_ablations", "tables"),
             _table_outs("table_restore_base_to_new", "table_restore_ablations")),
    Notebook("figure1a_nb", "20_figure1a_init_spread.ipynb", (f"{SUITE}/init_spread.csv",), ("suite@init_spread",),
             _figure_outs("figure1a_init_spread")),
    Notebook("figure1b_nb", "21_figure1b_overfitting.ipynb", (f"{SUITE}/overfit.csv", f"{ART}/backbone", f"{DATA}/coop"),
             ("suite@overfit",), _figure_outs("figure1b_overfitting", "figure1b_per_dataset", "figure1b_fit_room") + _table_outs("table_figure1b_fit_room")),
    Notebook("figure3a_nb", "22_figure3a_accuracy_per_epoch.ipynb", (f"{SUITE}/base2new.csv",), ("suite@base2new",),
             _figure_outs("figure3a_accuracy_per_epoch")),
    Notebook("figure3b_nb", "23_figure3b_gradient_alignment.ipynb",
             tuple(f"{ART}/meta/{r}" for r in ("coop_gram", "vpt_gram", "unigram")), ("meta_train",),
             _figure_outs("figure3b_gradient_alignment")),
    Notebook("figure_feature_shift_nb", "24_figure_feature_shift.ipynb",
             tuple(f"{SUITE}/{n}" for n in ("base2new.csv", "base2new.shifts.csv", "restore.csv", "restore.shifts.csv")),
             ("suite@base2new", "suite@restore"),
             (f"{R}/figures/figure_feature_shift_discrepancy.csv",)
             + _figure_outs("figure_feature_shift_discrepancy", "figure_feature_shift_layers")),
    Notebook("paper_audit", "30_paper_audit.ipynb", (), (), ("reports/paper_audit.csv",), per_profile=False),
)


NORMALISER = "gramlib.reporting.notebook_output"


def _index_stage() -> Stage:
    provenance = [o for nb in NOTEBOOKS for o in nb.outs
                  if o.endswith(".provenance.json") and ("/tables/" in o or "/figures/" in o)]
    return Stage("reports_index", f"gramlib index --reports {R}", ("gramlib.cli", "gramlib.reporting.index"),
                 inputs=tuple(provenance), outs=({f"{R}/README.md": {"cache": False}},),
                 comment="<reports>/README.md: every table and figure of the profile with its provenance")


def _site_stage() -> Stage:
    executed = tuple(nb.executed for nb in NOTEBOOKS)
    written = tuple(dict.fromkeys(o for nb in NOTEBOOKS for o in nb.outs))
    return Stage("report_site", f"python -m gramlib.reporting.site --reports {R} --out {R}/site",
                 ("gramlib.reporting.site",), inputs=(*executed, *written, f"{R}/world_probe.json", f"{R}/README.md"), outs=(f"{R}/site",),
                 comment="<reports>/site/index.html: the executed notebooks and tables as one static site "
                         "(Sphinx + myst-nb; a DVC output, not committed)")


def stage_modules(name: str) -> tuple[str, ...]:
    """The gramlib modules a stage (or notebook stage) runs: the roots of its import closure."""
    for s in (*STAGES, SUITE_STAGE, _index_stage(), _site_stage()):
        if s.name == name:
            return s.modules
    for nb in NOTEBOOKS:
        if nb.name == name:  # what the notebook imports, and the normaliser its stage runs after Papermill
            return tuple(sorted(notebook_modules(REPO / "notebooks" / nb.notebook) | {NORMALISER}))
    raise ValueError(f"unknown stage {name!r}")


def _deps(inputs: Sequence[str], configs: Sequence[str], modules: Sequence[str], first: Sequence[str] = ()) -> list[str]:
    return [*first, *inputs, *(f"{CFG}/{c}.json" for c in configs), *compact(code_files(modules))]


def _stage_dict(s: Stage) -> dict[str, Any]:
    d: dict[str, Any] = {"cmd": s.cmd, "deps": _deps(s.inputs, s.configs, s.modules)}
    if s.params:
        d["params"] = [p if not p.endswith(":") else {p[:-1]: None} for p in s.params]
    d["outs"] = list(s.outs)
    return d


def _notebook_dict(nb: Notebook) -> dict[str, Any]:
    out_dir = str(Path(nb.executed).parent)
    args = (f" -p profile {P} -p reports_dir {R}" if nb.per_profile else " -p reports_dir reports") + "".join(
        f" -p {k} {v}" for k, v in nb.args)
    cmd = (f"mkdir -p {out_dir} && papermill -k python3 --cwd notebooks notebooks/{nb.notebook} "
           f"{nb.executed}{args} && python -m {NORMALISER} {nb.executed}")
    modules = stage_modules(nb.name)
    return {"cmd": cmd, "deps": _deps(nb.inputs, nb.configs, modules, first=(f"notebooks/{nb.notebook}",)),
            "outs": [{nb.executed: {"cache": False}}, *({o: {"cache": False}} for o in nb.outs)]}


def pipeline() -> dict[str, Any]:
    """dvc.yaml's content."""
    stages: dict[str, Any] = {s.name: _stage_dict(s) for s in STAGES}
    suite = _stage_dict(SUITE_STAGE)
    stages["suite"] = {"foreach": list(EXPERIMENTS), "do": suite}
    for nb in NOTEBOOKS:
        stages[nb.name] = _notebook_dict(nb)
    stages["reports_index"] = _stage_dict(_index_stage())
    stages["report_site"] = _stage_dict(_site_stage())
    return {"stages": stages}


HEADER = """\
# GENERATED by `gramlib dvc-yaml` from gramlib/pipeline.py: edit that module, not this file
# (tests/test_pipeline_graph.py fails when the two differ).
# `dvc repro` regenerates the profile named by params.yaml's `profile` (mini by default). Each stage
# depends on the code it imports (gramlib.code_deps) and on artifacts/<profile>/config/<stage>.json,
# the parameters it reads, resolved for the profile (gramlib.stage_config). Notebooks run through
# Papermill; their executed copies go to <reports>/notebooks/ (committed, normalised by
# gramlib.reporting.notebook_output so that a re-run on unchanged inputs leaves git clean).
"""


def render() -> str:
    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(type(None), lambda d, _: d.represent_scalar("tag:yaml.org,2002:null", ""))
    body = yaml.dump(pipeline(), Dumper=_Dumper, sort_keys=False, width=140, default_flow_style=False,
                     allow_unicode=True)
    return HEADER + body


def write(path: Path = DVC_YAML) -> Path:
    from gramlib.io import write_text

    return write_text(path, render())
