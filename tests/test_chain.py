"""The whole `dvc repro` chain on the smoke profile, in a copy of the working tree (issue 6).

This is the user's main job at smoke size: world, tiny-CLIP pre-training, CHC, nine meta-training
runs, prompt pre-training, the five suite experiments and every notebook through Papermill. It checks
that every report file of the mini profile's chain is produced, that a second `dvc repro` has nothing
to do, and that a failing notebook cell fails the stage loudly while keeping the failed notebook and
every other stage's outputs. About 8 minutes on 2 cores, more than the rest of the suite together: marked
`chain`, so the default `pytest` stays fast; `pytest -m chain` (CI runs it) runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gramlib.config import REPO
from gramlib.reporting.tables import TABLE_COLUMNS

pytestmark = pytest.mark.chain

TABLES = ["table1_base_to_new", "table2_cross_domain", "table3_cross_dataset", "table4_cross_domain_4shot",
          "table5_cross_dataset_4shot", "table6_ablations", "table7_prompt_tokens"]
FIGURES = ["figure1a_init_spread", "figure1b_overfitting", "figure3a_accuracy_per_epoch",
           "figure3b_gradient_alignment"]
# beyond the paper's: RESTORE (issue 7), Table 1's CoOp+GRAM over three meta-training runs, Figure 1b's fitting side
OWN_TABLES = ["table_restore_base_to_new", "table_restore_ablations", "table1_meta_seeds", "table_figure1b_fit_room"]
OWN_FIGURES = ["figure_feature_shift_discrepancy", "figure_feature_shift_layers", "figure1b_fit_room", "figure1b_per_dataset"]


def _tree_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (repo / f).is_file()]


def run_in_copy(copy: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """``cmd`` in a copy of the repository, with its code first on the path and nothing fetched from a hub."""
    env = dict(os.environ, PYTHONPATH=str(copy), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("GRAMLIB_DATA_ROOT", None)
    env.pop("GRAMLIB_ARTIFACTS_ROOT", None)
    res = subprocess.run(list(cmd), cwd=copy, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return res


def _dvc(copy: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_in_copy(copy, sys.executable, "-m", "dvc", *args, check=check)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A copy of the working tree set to the smoke profile with one seed, after a full `dvc repro`."""
    copy = tmp_path_factory.mktemp("chain") / "repo"
    for f in _tree_files(REPO):
        if f.startswith(("reports/", "notes/", "benchmarks/results/")):
            continue  # the chain must produce its reports itself
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, copy / f)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["reports"] = "reports/smoke"  # each profile writes its own reports (reports/ is mini's)
    params["seeds"] = [1]
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (copy / "dvc.lock").unlink(missing_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke chain"]):
        subprocess.run(cmd, cwd=copy, check=True, capture_output=True)
    _dvc(copy, "config", "core.analytics", "false")
    _dvc(copy, "repro")
    return copy


def test_repro_produces_every_table_figure_and_the_index(chain):
    import pandas as pd

    reports = chain / "reports" / "smoke"
    assert not (chain / "reports" / "tables").exists()  # the mini profile's folder is left alone
    for stem in TABLES:
        df = pd.read_csv(reports / "tables" / f"{stem}.csv")
        assert list(df.columns) == TABLE_COLUMNS, stem  # ci_low/ci_high with their parts: se_seeds, se_test_draw, df
        assert len(df) > 0 and (df["n_seeds"] == 1).all(), stem
        assert df["mean"].between(0, 100).all(), stem
        md = (reports / "tables" / f"{stem}.md").read_text()
        assert "The paper's Table" in md
        assert yaml.safe_load((reports / "tables" / f"{stem}.provenance.json").read_text())["profile"] == "smoke"
    t1 = pd.read_csv(reports / "tables" / "table1_base_to_new.csv")
    assert {"CLIP", "CoOp", "CoCoOp", "VPT", "UNIGRAM", "CoOp+GRAM", "VPT+GRAM"} <= set(t1["method"])
    assert t1["se_test_draw"].notna().all()  # the result rows' fold scores reached the table (smoke: 25 test images a class)
    assert set(pd.read_csv(reports / "tables" / "table7_prompt_tokens.csv")["method"]) == {
        f"UNIGRAM ({n} tokens)" for n in (2, 4, 6, 8)}
    for stem in OWN_TABLES:
        df = pd.read_csv(reports / "tables" / f"{stem}.csv")
        assert list(df.columns) == TABLE_COLUMNS, stem
        assert len(df) > 0 and df["mean"].between(0, 100).all(), stem
    b2n = set(pd.read_csv(reports / "tables" / "table_restore_base_to_new.csv")["method"])
    assert {"CLIP", "CoOp", "VPT", "UNIGRAM", "CoOp+GRAM", "IVLP", "MaPLe", "RESTORE"} <= b2n
    abl = pd.read_csv(reports / "tables" / "table_restore_ablations.csv")
    assert {"mini_glyphs_blueprint", "Average"} == set(abl["dataset"]) and any("surgery none" in m for m in abl["method"])
    room = pd.read_csv(reports / "tables" / "table_figure1b_fit_room.csv")
    assert {"train", "base", "new"} == set(room["metric"]) and "linear probe" in set(room["method"])
    lens = pd.read_csv(reports / "figures" / "figure_feature_shift_discrepancy.csv")
    assert {"CLIP", "CoOp", "VPT", "IVLP", "MaPLe", "RESTORE", "CoOp+GRAM", "UNIGRAM"} <= set(lens["method"])
    assert lens.set_index("method").loc["CLIP", "discrepancy_mean"] == 0
    for stem in FIGURES + OWN_FIGURES:
        png = reports / "figures" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, stem
        assert (reports / "figures" / f"{stem}.provenance.json").exists()
    index = (reports / "README.md").read_text()
    for stem in TABLES + OWN_TABLES:
        assert f"tables/{stem}.md" in index
    for stem in FIGURES + OWN_FIGURES:
        assert f"figures/{stem}.png" in index
    for nb in (chain / "notebooks").glob("*.ipynb"):
        executed = chain / "reports" / ("smoke" if nb.name != "30_paper_audit.ipynb" else "") / "notebooks"
        # 11_transfer_tables is one notebook run once per table (Papermill -p table tableN): <stem>_tableN.ipynb
        names = ([f"{nb.stem}_table{n}.ipynb" for n in (2, 3, 4, 5)] if nb.name == "11_transfer_tables.ipynb"
                 else [nb.name])
        for name in names:
            assert (executed / name).exists(), name


def test_second_repro_does_nothing(chain):
    status = _dvc(chain, "status").stdout
    assert "up to date" in status.lower() or status.strip() == "", status


def test_executed_notebooks_are_readable_capped_and_stable(chain):
    """Issue 19: every notebook's executed copy is in <reports>/notebooks with outputs (figures inline as
    the very PNG bytes of reports/.../figures), under the size cap, free of run-to-run noise, and a forced
    re-run of a notebook stage on unchanged inputs changes no byte under reports/."""
    import base64
    import json

    from gramlib.reporting.notebook_output import MAX_BYTES

    executed = sorted((chain / "reports" / "smoke" / "notebooks").glob("*.ipynb"))
    assert len(executed) >= 17, [p.name for p in executed]
    for p in [*executed, chain / "reports" / "notebooks" / "30_paper_audit.ipynb"]:
        text = p.read_text()
        assert len(text.encode()) <= MAX_BYTES, p.name
        nb = json.loads(text)
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), p.name
        outs = json.dumps([c.get("outputs", []) for c in nb["cells"]])
        assert str(chain) not in outs and "it/s]" not in outs, p.name  # no machine paths, no progress bars
        assert set(nb["metadata"]["papermill"]) <= {"input_path", "output_path", "parameters", "default_parameters"}
        assert not any({"execution", "papermill"} & set(c["metadata"]) for c in nb["cells"]), p.name  # no timestamps
    nb = json.loads((chain / "reports" / "smoke" / "notebooks" / "20_figure1a_init_spread.ipynb").read_text())
    shown = [o["data"]["image/png"] for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    png = (chain / "reports" / "smoke" / "figures" / "figure1a_init_spread.png").read_bytes()
    assert shown and base64.b64decode("".join(shown[0])) == png

    before = {p: p.read_bytes() for p in (chain / "reports").rglob("*") if p.is_file()}
    for stage in ("figure1a_nb", "mini_world"):  # a figure notebook; the one with progress bars
        _dvc(chain, "repro", "-f", "-s", stage)
    after = {p: p.read_bytes() for p in (chain / "reports").rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)
    assert [str(p.relative_to(chain)) for p in before if after[p] != before[p]] == []


def test_report_site_every_page_loads_in_chromium(chain, tmp_path):
    """Issue 19: the site built by the report_site stage, opened from disk in headless Chromium: every page
    reachable from the index loads with no console error, failed request, undecoded image or broken link;
    pages follow the paper (Table 1 has its page) and carry their profile/commit stamp."""
    from gramlib.reporting.site_check import check_site, find_chromium

    site = chain / "reports" / "smoke" / "site"
    index = (site / "index.html").read_text()
    assert "§3.2" in index and "Table 1" in index
    table1 = (site / "notebooks" / "10_table1_base_to_new.html").read_text()
    assert "profile <strong>smoke</strong>" in table1 and "commit <code" in table1
    if find_chromium() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium): the browser check did not run")
    shots = {"index": tmp_path / "index.png", "notebooks/10_table1_base_to_new": tmp_path / "table1.png"}
    report = check_site(site, shots)
    assert report.problems == []
    assert len(report.pages) >= 20 and "notebooks/30_paper_audit" in report.pages
    for png in shots.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_cell_fails_the_stage_and_keeps_everything_else(chain):
    import nbformat

    nb_path = chain / "notebooks" / "16_table7_prompt_tokens.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('deliberate failure')"))
    nbformat.write(nb, nb_path)
    other = chain / "reports" / "smoke" / "tables" / "table1_base_to_new.csv"
    before = other.read_bytes()
    res = _dvc(chain, "repro", "table7_nb", check=False)
    assert res.returncode != 0
    assert "deliberate failure" in (res.stdout + res.stderr)
    failed = chain / "reports" / "smoke" / "notebooks" / "16_table7_prompt_tokens.ipynb"
    assert "deliberate failure" in failed.read_text()  # the failed notebook is kept for reading
    assert other.read_bytes() == before
    assert (chain / "artifacts" / "smoke" / "suite" / "base2new.csv").exists()


def test_papermill_new_shot_count_runs_its_own_experiment(chain, tmp_path):
    """`papermill -p shots 1 -p run True` (README): trains the missing units into a separate CSV and
    writes the table to the given reports folder, leaving the DVC stage's results alone."""
    env = dict(os.environ, PYTHONPATH=str(chain), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    stage_csv = chain / "artifacts" / "smoke" / "suite" / "base2new.csv"
    before = stage_csv.read_bytes()
    res = subprocess.run([sys.executable, "-m", "papermill", "-k", "python3", "--cwd", "notebooks",
                          "notebooks/10_table1_base_to_new.ipynb", str(tmp_path / "t1.ipynb"), "-p", "shots", "1",
                          "-p", "run", "True", "-p", "profile", "smoke", "-p", "reports_dir", str(tmp_path / "reports")],
                         cwd=chain, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (chain / "artifacts" / "smoke" / "suite" / "base2new_1shot_seeds1.csv").exists()
    assert stage_csv.read_bytes() == before
    prov = yaml.safe_load((tmp_path / "reports" / "tables" / "table1_base_to_new.provenance.json").read_text())
    assert prov["shots"] == 1 and "1 shots" in prov["title"]
