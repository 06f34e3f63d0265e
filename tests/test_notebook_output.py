"""The executed-notebook normaliser (issue 19): what a committed notebook keeps and what it loses."""

from __future__ import annotations

import base64
import json
import sys

import nbformat
import pytest

from gramlib.reporting.notebook_output import main, normalise_notebook

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-an-image").decode()


def _j(text) -> str:
    return "".join(text) if isinstance(text, list) else text  # nbformat stores multi-line text as lines


def _executed(root, run: int) -> nbformat.NotebookNode:
    """An executed notebook as Papermill writes it; ``run`` changes only what differs between two runs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"start_time": f"2026-12-04T12:5{run}:00", "end_time": f"2026-12-04T12:5{run}:09",
                                "duration": 9.0 + run, "environment_variables": {}, "exception": None, "version": "2.7.0",
                                "input_path": "notebooks/x.ipynb", "output_path": "reports/notebooks/x.ipynb",
                                "parameters": {"profile": "smoke", "seed": 1}, "default_parameters": {}}
    nb.metadata["widgets"] = {"state": {"run": run}}
    params = nbformat.v4.new_code_cell('profile = "smoke"', execution_count=1)
    params.metadata = {"tags": ["injected-parameters"], "papermill": {"duration": 0.01 * run},
                       "execution": {"iopub.execute_input": f"2026-12-04T12:5{run}:01Z"}}
    work = nbformat.v4.new_code_cell("train()", execution_count=2)
    work.metadata = {"execution": {"shell.execute_reply": f"2026-12-04T12:5{run}:05Z"}}
    work.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=(
            f"{sys.prefix}/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"
            f"\r  0%|          | 0/10 [00:00<?, ?it/s]\r 50%|█████     | 5/10 [00:0{run}<00:01, {3 + run}.1it/s]\n"
            "\r                                  \n"
            "WARNING:root:No pretrained weights loaded\n")),
        nbformat.v4.new_output("stream", name="stdout", text=f"saved {root}/reports/t.csv\n"),
        nbformat.v4.new_output("execute_result", execution_count=2, data={
            "text/plain": f"<gramlib.Learner object at 0x7f{run}a3c2d10e0>",
            "application/vnd.jupyter.widget-view+json": {"model_id": f"abc{run}"}}),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<IPython.core.display.Image object>"}),
        nbformat.v4.new_output("stream", name="stderr", text=f"\r100%|██████████| 10/10 [00:0{run}<00:00]\n"),
    ]
    params.id, work.id = f"{run}e7f3a9", "w"  # Papermill keeps the source's ids, draws one for the cell it injects
    nb.cells = [params, work]
    return nb


def test_two_runs_normalise_to_the_same_bytes_and_keep_what_a_reader_needs(tmp_path):
    paths = []
    for run in (1, 2):
        p = tmp_path / f"run{run}.ipynb"
        nbformat.write(_executed(tmp_path, run), p)
        info = normalise_notebook(p, root=tmp_path)
        assert info["cells_with_output"] == 1
        paths.append(p)
    a, b = (p.read_bytes() for p in paths)
    assert a == b
    nb = json.loads(a)
    assert nb["metadata"]["papermill"] == {"input_path": "notebooks/x.ipynb", "output_path": "reports/notebooks/x.ipynb",
                                           "parameters": {"profile": "smoke", "seed": 1}, "default_parameters": {}}
    assert "widgets" not in nb["metadata"]
    assert set(nb["metadata"]["gramlib"]) == {"commit", "dirty"}  # the tree that ran it (no git here: "unknown")
    params, work = nb["cells"]
    assert params["metadata"] == {"tags": ["injected-parameters"]} and work["metadata"] == {}
    assert (params["id"], work["id"]) == ("injected-parameters", "w")
    assert [c["execution_count"] for c in nb["cells"]] == [1, 2]
    err, out, res, img = work["outputs"]  # the progress-only stderr output is gone
    assert _j(err["text"]) == ("<python>/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"
                           "WARNING:root:No pretrained weights loaded\n")
    assert _j(out["text"]) == "saved reports/t.csv\n"
    assert {k: _j(v) for k, v in res["data"].items()} == {"text/plain": "<gramlib.Learner object at 0x…>"}
    assert _j(img["data"]["image/png"]) == PNG
    # normalising a normalised notebook changes nothing
    normalise_notebook(paths[0], root=tmp_path)
    assert paths[0].read_bytes() == a


def test_styled_tables_and_split_streams_normalise_to_the_same_bytes(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": [0.12], "vision": [0.34]})
    paths = []
    for run in (1, 2):
        nb = nbformat.v4.new_notebook()
        cells = []
        for i in range(2):  # two styled tables, each drawn with a fresh random uuid by pandas
            c = nbformat.v4.new_code_cell("frame.style", execution_count=i + 1)
            c.id = f"c{i}"
            c.outputs = [nbformat.v4.new_output("execute_result", execution_count=i + 1,
                                                data={"text/html": frame.style.format("{:.2f}").to_html()})]
            cells.append(c)
        # the same prints, stored as one stream output in run 1 and split by the kernel in run 2
        prints = ["CoOp+GRAM: 46.80\n", "CoOp: 48.52\n"]
        split = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in prints]
        cells[1].outputs = ([nbformat.v4.new_output("stream", name="stdout", text="".join(prints))] if run == 1
                            else split) + cells[1].outputs
        nb.cells = cells
        paths.append(tmp_path / f"run{run}.ipynb")
        nbformat.write(nb, paths[-1])
        normalise_notebook(paths[-1], root=tmp_path)
    a, b = (p.read_bytes() for p in paths)
    assert a == b
    cells = json.loads(a)["cells"]
    html0, html1 = (_j(c["outputs"][-1]["data"]["text/html"]) for c in cells)
    assert '<table id="T_nb0"' in html0 and '<table id="T_nb1"' in html1  # unique on the page
    assert "#T_nb0_" not in html1 and "0.34" in html0  # each table's CSS follows its own id; values kept
    stdout = cells[1]["outputs"][0]
    assert stdout["output_type"] == "stream" and _j(stdout["text"]) == "CoOp+GRAM: 46.80\nCoOp: 48.52\n"


def test_an_oversized_notebook_is_named_and_left_alone(tmp_path, capsys):
    p = tmp_path / "big.ipynb"
    nb = _executed(tmp_path, 1)
    nb.cells[1].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="0.123 " * 50_000))
    nbformat.write(nb, p)
    before = p.read_bytes()
    with pytest.raises(ValueError, match=r"big\.ipynb: 0\.3\d MB after normalisation, over the 0\.1 MB cap.*cells \[1"):
        normalise_notebook(p, root=tmp_path, max_bytes=100_000)
    assert p.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="nowhere.ipynb: no executed notebook"):
        normalise_notebook(tmp_path / "nowhere.ipynb")
    assert main([str(p), "--root", str(tmp_path)]) == 0  # under the default cap
    assert "big.ipynb" in capsys.readouterr().out


def test_site_stamp_reads_the_notebook_then_what_it_wrote(tmp_path):
    """A page's stamp: profile from Papermill's parameters, commit from the normaliser's record, seeds from
    the provenance of the files the notebook wrote (nested records included)."""
    from gramlib.reporting.site import notebook_stamp

    (tmp_path / "chc").mkdir()
    (tmp_path / "chc" / "metrics.json").write_text(json.dumps({"n": 3, "provenance": {"seeds": [1, 2], "commit": "zzz"}}))
    (tmp_path / "t.provenance.json").write_text(json.dumps({"profile": "other", "seeds": [7]}))
    nb = {"metadata": {"papermill": {"parameters": {"profile": "smoke"}}, "gramlib": {"commit": "abc123", "dirty": False}}}
    assert notebook_stamp(nb, [tmp_path / "chc"]) == {"profile": "smoke", "commit": "abc123", "seeds": [1, 2]}
    assert notebook_stamp(nb, [tmp_path / "t.provenance.json", tmp_path / "chc"])["seeds"] == [7]
    assert notebook_stamp({"metadata": {}}, [tmp_path / "missing.json"]) == {"profile": None, "commit": None, "seeds": None}


def test_the_committed_executed_notebooks_cover_every_numbered_notebook():
    """Issue 19's bar on the committed mini reports: an executed copy of every numbered notebook (one per
    transfer table for notebook 11), each with output cells, under the cap, stamped with its commit."""
    from gramlib.config import REPO
    from gramlib.reporting.notebook_output import MAX_BYTES

    executed = REPO / "reports" / "notebooks"
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        names = ([f"{nb.stem}_table{n}.ipynb" for n in (2, 3, 4, 5)] if nb.name == "11_transfer_tables.ipynb"
                 else [nb.name])
        for name in names:
            path = executed / name
            assert path.exists(), f"{path}: no executed copy (dvc repro writes it)"
            text = path.read_text()
            assert len(text.encode()) <= MAX_BYTES, name
            doc = json.loads(text)
            assert any(c.get("outputs") for c in doc["cells"] if c["cell_type"] == "code"), name
            assert len(doc["metadata"]["gramlib"]["commit"]) == 40 and doc["metadata"]["gramlib"]["dirty"] is False, name


def test_every_source_notebook_cell_has_a_fixed_id():
    """A cell without an id gets a random one from nbformat at every run (Papermill keeps the source's):
    its executed copy would differ between two runs of the same inputs (found by a fresh-clone repro)."""
    from gramlib.config import REPO

    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        ids = [c.get("id") for c in cells]
        assert all(ids), f"{nb.name}: cells {[i for i, x in enumerate(ids) if not x]} have no id"
        assert len(set(ids)) == len(ids), f"{nb.name}: duplicate cell ids"
