"""Report helpers: byte-stable figures, atomic tables, and the provenance stamp of every number."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from gramlib.config import REPO
from gramlib.io import atomic_path, write_json


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """The commit the code came from, and whether the tree had uncommitted changes.

    ``dvc.lock`` and ``reports/`` are what a `dvc repro` itself rewrites while it runs, so changes
    there do not make the code "dirty"; any other tracked change does.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":(exclude)dvc.lock", ":(exclude)reports"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("GRAM_COMMIT", "unknown"), "dirty": None}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the libraries whose versions can move a number (float kernels, solvers, clustering)
VERSIONED = ("numpy", "scipy", "pandas", "scikit-learn", "open_clip_torch", "torchvision", "bertopic",
             "hdbscan", "umap-learn", "sentence-transformers")


def machine_info() -> dict[str, Any]:
    """Where a number was computed: numbers from other machines agree within their intervals, not to
    the bit (float reductions differ between CPUs and thread counts), so the record says which."""
    from importlib import metadata

    import torch

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": versions}


def provenance(profile: str, params: dict | None = None, **extra: Any) -> dict[str, Any]:
    import torch

    return {"profile": profile, **git_commit(), "params": params or {}, "torch": torch.__version__,
            "python": platform.python_version(), "machine": machine_info(), **extra}


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a PNG with no date or version metadata, so identical runs give identical bytes."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def write_csv(df: pd.DataFrame, path: str | os.PathLike, float_format: str = "%.4f") -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)
    return path


def write_provenance(path: str | os.PathLike, **stamp: Any) -> Path:
    return write_json(path, stamp)
