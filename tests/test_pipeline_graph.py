"""The layout and the DVC graph: no import cycle, no private import across modules, and a dvc.yaml
whose stages depend on exactly the code they import and the parameters they read (issue 13)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gramlib import code_deps
from gramlib.code_deps import REPO, closure, code_files, expand, imported_modules, module_files


def _graph() -> dict[str, set[str]]:
    """module -> modules it imports (anywhere in the file), plus the __init__ of every *other* package
    on the way (importing gramlib.restore.learner runs gramlib/restore/__init__.py first)."""
    mods = module_files()
    out = {}
    for m, path in mods.items():
        direct = imported_modules(path.read_text(), m)
        edges = set(direct)
        for d in direct:
            parts = d.split(".")
            for i in range(2, len(parts)):
                pkg = ".".join(parts[:i])
                if pkg in mods and not m.startswith(pkg + ".") and m != pkg:
                    edges.add(pkg)
        edges.discard(m)
        out[m] = edges
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_paper_packages_import():
    import gramlib.experiments  # noqa: F401
    import gramlib.gram.meta  # noqa: F401
    import gramlib.gram.regulator  # noqa: F401
    import gramlib.gram.tasks  # noqa: F401
    import gramlib.reporting  # noqa: F401


def test_no_import_cycle_in_gramlib():
    assert _cycles(_graph()) == []


def test_no_private_name_is_imported_across_modules():
    mods = module_files()
    offenders = []
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gramlib") and not node.level:
                for a in node.names:
                    if a.name.startswith("_") and f"{node.module}.{a.name}" not in mods and node.module != m:
                        offenders.append(f"{m}: from {node.module} import {a.name}")
    assert offenders == []


def test_closure_follows_function_level_imports_and_packages():
    got = closure(["gramlib.experiments.meta_runs"])
    assert {"gramlib.gram.meta_train", "gramlib.gram.pretrain_prompts", "gramlib.gram", "gramlib.experiments",
            "gramlib"} <= got
    assert "gramlib.reporting.tables" not in got  # meta-training never renders a table
    # the command line's lazy per-command imports are dispatch, not dependencies
    assert "gramlib.chc.stage" not in closure(["gramlib.cli"])


def test_dvc_yaml_is_the_generated_pipeline():
    from gramlib.pipeline import render

    assert (REPO / "dvc.yaml").read_text() == render(), "dvc.yaml is stale: run `gramlib dvc-yaml`"


def _stages() -> dict[str, dict]:
    """dvc.yaml's stages with foreach expanded (suite@<experiment>), ${profile} left in."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in raw.items():
        if "foreach" in st:
            for item in st["foreach"]:
                out[f"{name}@{item}"] = json.loads(json.dumps(st["do"]).replace("${item}", item))
        else:
            out[name] = st
    return out


def test_every_stage_depends_on_exactly_the_code_it_imports():
    from gramlib.pipeline import stage_modules

    for name, st in _stages().items():
        listed = expand(d for d in st["deps"] if d.startswith("gramlib/"))
        want = expand(code_files(stage_modules(name.split("@")[0])))
        assert listed == want, f"{name}: missing {sorted(want - listed)}, extra {sorted(listed - want)}"


def test_notebook_stages_depend_on_what_their_cells_import(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["%matplotlib inline\n", "from gramlib.reporting import tables as T\n",
                                                      "import gramlib.gram.regulator as R\n"]},
                    {"cell_type": "markdown", "source": ["import gramlib.world"]}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert code_deps.notebook_modules(tmp_path / "x.ipynb") == {"gramlib.reporting", "gramlib.reporting.tables",
                                                                 "gramlib.gram.regulator"}


# ---------------------------------------------------------------------------------------------------
# `dvc status` in a copy of the repository: an edit reports exactly the stages that run the code


def _dvc(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(cwd), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"dvc {' '.join(args)}: {res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def committed_copy(tmp_path_factory) -> Path:
    """A copy of the tree whose every stage DVC considers up to date (placeholder data and outputs)."""
    copy = tmp_path_factory.mktemp("graph") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in files:
        if f and (REPO / f).is_file() and not f.startswith(("reports/", "notes/", "benchmarks/")):
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, copy / f)
    (copy / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    script = (
        "import pathlib\nfrom dvc.repo import Repo\n"
        "for st in Repo('.').index.stages:\n"
        "    for o in [*st.deps, *st.outs]:\n"
        "        p = pathlib.Path(o.fs_path)\n"
        "        if p.exists(): continue\n"
        "        if p.suffix: p.parent.mkdir(parents=True, exist_ok=True); p.write_text('x')\n"
        "        else: p.mkdir(parents=True, exist_ok=True); (p / 'placeholder').write_text('x')\n")
    subprocess.run([sys.executable, "-c", script], cwd=copy, check=True)
    _dvc(copy, "commit", "-f", "-q")
    assert json.loads(_dvc(copy, "status", "--json")) == {}
    return copy


@pytest.mark.parametrize("edited", ["gramlib/data/coop.py", "gramlib/prompts/coop.py", "gramlib/gram/regulator.py"])
def test_an_edit_reports_every_stage_whose_code_it_is(committed_copy, edited):
    from gramlib.pipeline import stage_modules

    expected = {name for name in _stages() if edited in expand(code_files(stage_modules(name.split("@")[0])))}
    path = committed_copy / edited
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        status = json.loads(_dvc(committed_copy, "status", "--json"))
    finally:
        path.write_text(original)
    reported = {name for name, changes in status.items() for c in changes
                if any(edited == d or edited.startswith(d + "/") for d in c.get("changed deps", {}))}
    assert expected and reported == expected
    assert set(status) == reported  # nothing else is stale


def test_editing_an_experiments_shots_changes_only_its_configuration(tmp_path):
    from gramlib.config import get_profile, load_params
    from gramlib.stage_config import stage_config

    params = load_params()
    prof = get_profile("mini", params=params)
    before = stage_config(None, prof, params)
    params["suite"]["experiments"]["transfer4"]["shots"] = 2
    after = stage_config(None, prof, params)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"suite@transfer4"}
    assert after["suite@transfer4"]["experiment"]["shots"] == 2
    assert "shots" not in params  # the old top-level key that nothing read is gone
