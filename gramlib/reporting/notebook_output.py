"""Executed notebooks that a forge renders and that git keeps still (issue 19).

A companion is read far more often than it is run: every notebook stage writes Papermill's executed copy
to ``<reports>/notebooks/`` (committed), and this module makes that copy worth committing:

* :func:`save_and_show` saves a figure (byte-stable PNG, :func:`gramlib.reporting.provenance.save_figure`)
  and shows those very bytes inline, so the executed notebook carries the figure a forge can display
  (the notebooks draw with the Agg backend, which shows nothing by itself);
* :func:`normalise_notebook` strips what changes between two runs of the same inputs (Papermill's and
  the kernel's timestamps and durations, progress bars, the machine's absolute paths, memory addresses,
  widget state), so ``dvc repro -f`` of a notebook stage on unchanged inputs leaves git clean, and fails
  with the notebook named when the copy outgrows the size cap (large arrays are never printed).

CLI (the last command of every notebook stage)::

    python -m gramlib.reporting.notebook_output reports/notebooks/10_table1_base_to_new.ipynb
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_BYTES = 2_000_000  # per executed notebook (issue 19's cap): a figure is ~50-150 kB, tables a few kB

# Papermill's notebook-level record: what ran with which parameters stays, when and how long goes
_KEEP_PAPERMILL = ("input_path", "output_path", "parameters", "default_parameters")
_TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json")
_WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")
# a tqdm progress line: "  40%|████      | 4/10 [00:01<00:02,  3.1it/s]" (times and rates vary per run)
_PROGRESS = re.compile(r"\d+%\|.*\||\d+(\.\d+)?\s*(it/s|s/it)\b|\[\d{2}:\d{2}[<,]")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
# pandas' Styler names each table's CSS ids after a random uuid prefix: <table id="T_9bd72"> and T_9bd72_row0_col0
_STYLER_ID = re.compile(r'<table id="(T_[0-9a-f]{5})"')


def save_and_show(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as a byte-stable PNG and display exactly those bytes inline (then close it, so a
    backend that shows open figures at the end of a cell does not show it twice)."""
    import matplotlib.pyplot as plt

    from gramlib.reporting.provenance import save_figure

    out = save_figure(fig, path, dpi=dpi)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # no IPython: a script; the file is the figure
        return out
    if get_ipython() is not None:
        display(Image(data=out.read_bytes(), format="png"))
        plt.close(fig)
    return out


def _path_prefixes(root: Path) -> list[tuple[str, str]]:
    """(absolute prefix, replacement), longest first: the repository becomes relative, the Python
    installation ``<python>``, the home folder ``~``."""
    pairs = {str(root.resolve()) + os.sep: "", str(root.resolve()): ".",
             sys.prefix + os.sep: "<python>/", sys.base_prefix + os.sep: "<python>/",
             str(Path.home()) + os.sep: "~/"}
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _clean_text(text: str, prefixes: list[tuple[str, str]]) -> str:
    for prefix, repl in prefixes:
        if len(prefix) > 1:
            text = text.replace(prefix, repl)
    return _ADDRESS.sub("0x…", text)


def _join(text: Any) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def _clean_stream(text: str) -> str:
    """A stream's text without progress-bar lines (tqdm redraws with carriage returns)."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rsplit("\r", 1)[-1]  # what a terminal would have left on screen
        if _PROGRESS.search(line) or ("\r" in raw and not line.strip()):
            continue
        lines.append(line)
    return "\n".join(lines)


def _clean_output(out: dict[str, Any], prefixes: list[tuple[str, str]]) -> dict[str, Any] | None:
    kind = out.get("output_type")
    if kind == "stream":
        text = _clean_text(_clean_stream(_join(out.get("text", ""))), prefixes)
        return {**out, "text": text} if text.strip() else None
    if kind in ("display_data", "execute_result"):
        data = {k: v for k, v in out.get("data", {}).items() if k not in _WIDGET_MIMES}
        for mime in _TEXT_MIMES:
            if mime in data and not isinstance(data[mime], dict):
                data[mime] = _clean_text(_join(data[mime]), prefixes)
        if not data:
            return None
        return {**out, "data": data, "metadata": {k: v for k, v in out.get("metadata", {}).items() if k != "widgets"}}
    if kind == "error":
        return {**out, "traceback": [_clean_text(t, prefixes) for t in out.get("traceback", [])]}
    return out


def _merge_streams(outs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent outputs of the same stream as one: the kernel splits a cell's prints into messages by
    timing, so two runs can store the same text as one output or as two."""
    merged: list[dict[str, Any]] = []
    for o in outs:
        prev = merged[-1] if merged else None
        if prev is not None and o.get("output_type") == "stream" == prev.get("output_type") \
                and o.get("name") == prev.get("name"):
            merged[-1] = {**prev, "text": _join(prev["text"]) + _join(o["text"])}
        else:
            merged.append(o)
    return merged


def _renumber_styler_ids(outs: list[dict[str, Any]], seen: dict[str, str]) -> None:
    """Replace each Styler table's random uuid by its order in the notebook (``T_nb0``, ``T_nb1``, ...),
    in place: unique across the page, as the ids must be, and the same every run."""
    for o in outs:
        html = o.get("data", {}).get("text/html")
        if not isinstance(html, str):
            continue
        own = dict.fromkeys(_STYLER_ID.findall(html))  # this output's tables: their CSS names them alone
        for uid in own:
            html = html.replace(uid, seen.setdefault(uid, f"T_nb{len(seen)}"))
        o["data"]["text/html"] = html


def normalise_notebook(path: str | os.PathLike, root: str | os.PathLike | None = None,
                       max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Rewrite an executed notebook in place without run-to-run noise; returns what it holds.

    Kept: sources, outputs (PNG, HTML, text), execution counts (Papermill runs cells in order, so they
    are the same every run), cell tags, the kernel and language records, Papermill's input/output paths
    and parameters. Added: ``metadata.gramlib``, the commit (and dirty flag) of the tree that ran it.
    Dropped or fixed: every timestamp and duration, Papermill's environment and version, widget state,
    progress bars, the random id of the cell Papermill injects, the random ids of pandas' styled tables,
    how the kernel happened to split a stream into messages; absolute paths of ``root`` (default: the
    current folder, the repository for a DVC stage), of the Python installation and of the home folder
    are made relative or symbolic.
    """
    import nbformat

    from gramlib.io import write_text
    from gramlib.reporting.provenance import git_commit

    path, root = Path(path), Path(root) if root is not None else Path.cwd()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no executed notebook (did Papermill run?)")
    nb = nbformat.read(path, as_version=4)
    prefixes = _path_prefixes(root)
    meta = nb.metadata
    if "papermill" in meta:
        pm = meta["papermill"]
        meta["papermill"] = {k: pm[k] for k in _KEEP_PAPERMILL if k in pm}
        for k in ("input_path", "output_path"):
            if isinstance(meta["papermill"].get(k), str):
                meta["papermill"][k] = _clean_text(meta["papermill"][k], prefixes)
    meta.pop("widgets", None)
    meta["gramlib"] = git_commit(root)  # the commit that ran it (the site's page stamps)
    n_outputs, styler_ids = 0, {}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k not in ("execution", "papermill", "ExecuteTime")}
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"  # Papermill draws a new random id for the cell it injects
        if cell.cell_type != "code":
            continue
        outs = _merge_streams([o for o in (_clean_output(dict(o), prefixes) for o in cell.outputs) if o is not None])
        _renumber_styler_ids(outs, styler_ids)
        cell.outputs = [nbformat.from_dict(o) for o in outs]
        n_outputs += bool(outs)
    text = nbformat.writes(nb)
    text += "" if text.endswith("\n") else "\n"
    size = len(text.encode())
    if size > max_bytes:
        biggest = sorted(((len(json.dumps(c.get("outputs", []))), i) for i, c in enumerate(nb.cells)), reverse=True)[:3]
        raise ValueError(f"{path}: {size / 1e6:.2f} MB after normalisation, over the {max_bytes / 1e6:.1f} MB cap of an "
                         f"executed notebook; largest outputs in cells {[i for _, i in biggest]}: print less "
                         f"(a summary, not the array) or save it to a file")
    write_text(path, text)
    return {"path": str(path), "bytes": size, "cells_with_output": n_outputs}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Normalise executed notebooks in place (issue 19).")
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--root", type=Path, default=None, help="the repository (default: the current folder)")
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    a = ap.parse_args(argv)
    for p in a.paths:
        info = normalise_notebook(p, a.root, a.max_bytes)
        print(f"{info['path']}: {info['bytes'] / 1e3:.0f} kB, {info['cells_with_output']} cell(s) with output")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["MAX_BYTES", "normalise_notebook", "save_and_show"]
