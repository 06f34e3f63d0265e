"""Every notebook of the chain executes through Papermill on the smoke profile (as `dvc repro` runs it)."""

import json

import pytest


def run_notebook(name, tmp_path, smoke, **params):
    import papermill as pm

    from gramlib.config import REPO

    out = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(out), kernel_name="python3",
                        cwd=str(REPO / "notebooks"), progress_bar=False,
                        parameters={"profile": "smoke", "reports_dir": str(tmp_path / "reports"),
                                    "data_root": str(smoke.root), "artifacts_root": str(smoke.artifacts.parent), **params})
    return out


def test_00_mini_world(smoke, tmp_path):
    import pandas as pd

    run_notebook("00_mini_world", tmp_path, smoke)
    reports = tmp_path / "reports"
    zs = pd.read_csv(reports / "zero_shot.csv")
    assert list(zs.columns) == ["dataset", "style", "accuracy", "n_test", "n_classes", "chance"]
    assert set(zs[zs["style"] == "all"]["dataset"]) == set(smoke.datasets) | set(smoke.variants)
    for fig in ("mini_world_grid", "mini_world_stats", "mini_world_pretraining", "mini_world_zero_shot"):
        assert (reports / "figures" / f"{fig}.png").stat().st_size > 1000
    prov = json.loads((reports / "zero_shot.provenance.json").read_text())
    assert prov["profile"] == "smoke" and "commit" in prov


def test_30_paper_audit(tmp_path):
    import papermill as pm
    import pandas as pd

    from gramlib.config import REPO

    pm.execute_notebook(str(REPO / "notebooks" / "30_paper_audit.ipynb"), str(tmp_path / "out.ipynb"),
                        kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False,
                        parameters={"reports_dir": str(tmp_path)})
    audit = pd.read_csv(tmp_path / "paper_audit.csv")
    assert len(audit) == 141
    bad = audit[~audit["consistent"]]
    # the one inconsistency in the paper: Table 1, DTD, UNIGRAM: H 67.56 printed, 67.54 from 73.62 / 62.38
    assert bad[["table", "dataset", "method"]].values.tolist() == [[1, "DTD", "UNIGRAM"]]


def _transfer_rows(shots):
    """Suite-like result rows of a transfer experiment: one seed-1 and one seed-2 run per method,
    the source and two targets per view, a stale earlier epoch that the table must ignore."""
    import pandas as pd

    out = []
    for view, targets in (("cross_domain", ["mini_imagenet_v2", "mini_imagenet_r"]),
                          ("cross_dataset", ["mini_shapes_sketch_blueprint", "mini_glyphs_blueprint"])):
        for i, method in enumerate(["CoOp", "CoOp+GRAM", "CLIP"]):
            for seed in (1, 2):
                for j, dataset in enumerate(["mini_imagenet"] + targets):
                    for epoch, bump in ((1, -50.0), (2, 0.0)):
                        out.append({"protocol": view, "dataset": dataset, "method": method, "seed": seed,
                                    "shots": shots, "epoch": epoch, "split": "test",
                                    "accuracy": 40.0 + 10 * i + 5 * j + seed + bump})
    return pd.DataFrame(out)


def test_transfer_tables_notebook_and_its_function(tmp_path, monkeypatch):
    """Tables 2-5 come from one notebook (11_transfer_tables, Papermill parameter `table`) calling
    `tables.transfer_report`: each table keeps its file names, columns and provenance keys."""
    import nbformat
    import pandas as pd

    import gramlib.experiments.suite as suite
    from gramlib.config import REPO, get_profile
    from gramlib.reporting import tables as T

    nb = nbformat.read(REPO / "notebooks" / "11_transfer_tables.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'table = "table2"' in params[0].source
    assert {k: (s.experiment, s.view, s.stem) for k, s in T.TRANSFER_TABLES.items()} == {
        "table2": ("transfer16", "cross_domain", "table2_cross_domain"),
        "table3": ("transfer16", "cross_dataset", "table3_cross_dataset"),
        "table4": ("transfer4", "cross_domain", "table4_cross_domain_4shot"),
        "table5": ("transfer4", "cross_dataset", "table5_cross_dataset_4shot")}

    shots = {"transfer16": 16, "transfer4": 4}

    def fake_rows(prof, name, **kw):
        return _transfer_rows(shots[name]), {"profile": prof.name, "experiment": name, "seeds": [1, 2],
                                             "shots": shots[name]}

    monkeypatch.setattr(suite, "experiment_rows", fake_rows)
    names_read = []

    def fake_classnames(prof, names):  # the source shares "star" with its first target only
        names_read.append(list(names))
        return {n: ["star", f"{n} a"] for n in names}

    monkeypatch.setattr(T, "dataset_classnames", fake_classnames)
    prof = get_profile("smoke")
    for key, spec in T.TRANSFER_TABLES.items():
        rep = T.transfer_report(key, prof, tmp_path)
        assert rep.methods == ["CLIP", "CoOp", "CoOp+GRAM"]
        df = pd.read_csv(tmp_path / "tables" / f"{spec.stem}.csv")
        assert list(df.columns) == T.TABLE_COLUMNS and set(df["metric"]) == {f"acc_{shots[spec.experiment]}shot"}
        # Average over the two targets only, last epoch only: CoOp (i=0) on targets j=1, 2 -> 40 + 7.5 + mean seed 1.5
        avg = df[(df["dataset"] == "Average") & (df["method"] == "CoOp")]["mean"].item()
        assert avg == pytest.approx(49.0)
        assert {"mini_imagenet", "Average"} < set(df["dataset"])
        md = (tmp_path / "tables" / f"{spec.stem}.md").read_text()
        assert f"The paper's Table {spec.number}" in md and "| CoOp+GRAM |" in md
        prov = json.loads((tmp_path / "tables" / f"{spec.stem}.provenance.json").read_text())
        keys = {"profile", "experiment", "seeds", "shots", "title", "headline", "notebook"}
        if spec.view == "cross_dataset":  # the labels each target shares with the source, in the .md too
            assert set(prov) == keys | {"shared_labels"}
            assert set(prov["shared_labels"]) == set(rep.shared) and all(v == ["star"] for v in rep.shared.values())
            assert "Class names shared with the source `mini_imagenet`" in md
        else:
            assert set(prov) == keys and rep.shared == {}
        assert prov["notebook"] == "notebooks/11_transfer_tables.ipynb"
        assert prov["title"].startswith(f"Table {spec.number}: ") and prov["headline"].startswith("Target average: CLIP")
        assert list(rep.check["where"]) == ["target average", "source"]
