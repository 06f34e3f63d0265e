"""``reports/README.md``: an index of every table and figure with the provenance of its numbers.

Each table and figure notebook writes ``<name>.provenance.json`` beside its output (profile, git
commit, seeds, shots, parameters, run time of the experiment behind it); this module only reads
those stamps and the outputs, so the index can never claim more than was written.

Run: ``gramlib index --reports reports``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gramlib.io import atomic_path, read_json

# the other reports of the chain (method notebooks), listed after the paper's tables and figures
OTHER_REPORTS = (
    ("zero_shot.csv", "Zero-shot accuracy of the profile's CLIP on every dataset (notebook 00)"),
    ("chc/metrics.json", "CHC: clustering metrics against the world's ground truth (notebook 01)"),
    ("meta/task_stats.json", "Meta-training tasks: sizes and domain shift (notebook 02)"),
    ("meta/metrics.json", "Meta-training curves summary (notebook 03)"),
    ("paper_audit.csv", "Audit of the paper's own harmonic means and averages (notebook 30)"),
)


def _stamp_line(stamp: dict[str, Any]) -> str:
    commit = str(stamp.get("commit", "?"))[:10] + (" (dirty)" if stamp.get("dirty") else "")
    parts = [f"profile `{stamp.get('profile')}`", f"commit `{commit}`"]
    if stamp.get("seeds") is not None:
        parts.append(f"seeds {stamp['seeds']}")
    if stamp.get("shots") is not None:
        parts.append(f"shots {stamp['shots']}")
    if stamp.get("experiment"):
        parts.append(f"experiment `{stamp['experiment']}`")
    if stamp.get("runtime_s") is not None:
        parts.append(f"training time {float(stamp['runtime_s']):.0f} s")
    if stamp.get("notebook"):
        parts.append(f"notebook `{stamp['notebook']}`")
    return ", ".join(parts)


def _sort_key(path: Path) -> tuple:
    stem = path.name.split(".")[0]
    head = stem.split("_")[0]
    digits = "".join(c for c in head if c.isdigit())
    return (int(digits) if digits else 99, head, stem)


def build_index(reports: str | Path) -> str:
    """The Markdown of ``reports/README.md`` (pure: reads the stamps, writes nothing)."""
    reports = Path(reports)
    lines = ["# Reports", "",
             "Every table and figure below was written by `dvc repro` (notebooks executed by Papermill); "
             "each line gives the profile, the git commit, the seeds and the experiment behind it. "
             "Numbers are accuracy in percent, mean ± std over seeds. The paper's own tables are printed "
             "under ours in each `.md` file for reference.", ""]
    for kind, link in (("tables", lambda stem: f"[`tables/{stem}.md`](tables/{stem}.md) · "
                                                f"[`tables/{stem}.csv`](tables/{stem}.csv)  "),
                       ("figures", lambda stem: f"![{stem}](figures/{stem}.png)\n")):
        stamps = sorted((reports / kind).glob(f"{kind[:-1]}*.provenance.json"), key=_sort_key)
        lines += [f"## {kind.capitalize()}", ""]
        if not stamps:
            lines += ["(none yet)", ""]
        for p in stamps:
            stem = p.name.removesuffix(".provenance.json")
            stamp = read_json(p)
            lines += [f"### {stamp.get('title', stem)}", "", link(stem), _stamp_line(stamp), ""]
            if stamp.get("headline"):
                lines += [str(stamp["headline"]), ""]
    lines += ["## Other reports", ""]
    for rel, what in OTHER_REPORTS:
        if (reports / rel).exists():
            lines.append(f"- [`{rel}`]({rel}): {what}")
    return "\n".join(lines).rstrip() + "\n"


def write_index(reports: str | Path) -> Path:
    reports = Path(reports)
    path = reports / "README.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(build_index(reports))
    return path
