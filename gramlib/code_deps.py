"""The code a pipeline stage runs: the transitive closure of the gramlib modules it imports.

Why: a stage that misses a code dependency leaves stale results (``dvc repro`` does not rerun it
after an edit), and one that lists code it never runs reruns for nothing. So the code deps of every
stage in dvc.yaml are *derived* from the imports (tests/test_pipeline_graph.py checks dvc.yaml
against :func:`stage_code`), and a meta-training run's fingerprint hashes the same closure.

Read statically with :mod:`ast`: every ``import gramlib...`` / ``from gramlib... import ...`` of a
module counts, including imports inside functions (a function that may run is code the result may
depend on), plus the ``__init__`` of every package on the way. The one exception is the command
line (:mod:`gramlib.cli`), whose commands import their stage's modules lazily: there only the
module-level imports count, and a stage names its command's modules itself.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "gramlib"
ROOT = Path(__file__).resolve().parent  # gramlib/
REPO = ROOT.parent

#: data files that a module reads at run time (part of its code for the purpose of staleness)
DATA_FILES: dict[str, tuple[str, ...]] = {
    "gramlib.clip.factory": ("gramlib/clip/model_configs",),
    "gramlib.reference": ("gramlib/reference/paper_tables.csv",),
}
#: modules whose function-level imports are dispatch, not dependencies (see the module docstring)
DISPATCHERS = frozenset({"gramlib.cli"})


@functools.lru_cache(maxsize=1)
def module_files() -> dict[str, Path]:
    """Every gramlib module name -> its file (packages map to their ``__init__.py``)."""
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str) -> str | None:
    """The module that an imported dotted name lives in (``gramlib.chc.ctfidf.c_tf_idf`` -> ``gramlib.chc.ctfidf``)."""
    mods = module_files()
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(source: str, importer: str | None = None, *, top_level_only: bool = False) -> set[str]:
    """The gramlib modules that ``source`` imports (``importer``: its own module name, for relative imports)."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    is_pkg = importer is not None and module_files().get(importer, Path()).name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if importer is None:
                    continue
                pkg = importer.split(".") if is_pkg else importer.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            if n == PACKAGE or n.startswith(PACKAGE + "."):
                mod = _resolve(n)
                if mod:
                    found.add(mod)
    return found


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.lru_cache(maxsize=None)
def _direct(module: str) -> frozenset[str]:
    src = module_files()[module].read_text(encoding="utf-8")
    return frozenset(imported_modules(src, module, top_level_only=module in DISPATCHERS))


def closure(modules: Iterable[str]) -> set[str]:
    """``modules``, every gramlib module they import (transitively) and the packages on the way."""
    todo = list(modules)
    unknown = [m for m in todo if m not in module_files()]
    if unknown:
        raise ValueError(f"not gramlib modules: {unknown}")
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_direct(m))
        todo.extend(p for p in _parents(m) if p in module_files())
    return seen


def notebook_modules(path: str | Path) -> set[str]:
    """The gramlib modules a notebook's code cells import (IPython magics and shell lines skipped)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = "".join(cell.get("source", []))
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        found |= imported_modules("\n".join(lines))
    return found


def code_files(modules: Iterable[str]) -> list[str]:
    """Repository-relative files (and data folders) of the closure of ``modules``, sorted."""
    mods = closure(modules)
    files = {str(module_files()[m].relative_to(REPO)) for m in mods}
    for m in mods:
        files.update(DATA_FILES.get(m, ()))
    return sorted(files)


def compact(files: Iterable[str]) -> list[str]:
    """``files`` with every folder whose Python files are all listed named once instead (deepest first)."""
    out = set(files)
    dirs = {str(Path(f).parent) for f in out if f.endswith(".py")}
    dirs |= {str(Path(d).parent) for d in dirs}
    for d in sorted(dirs, key=lambda d: -d.count("/")):
        py = {str(f.relative_to(REPO)) for f in (REPO / d).rglob("*.py") if "__pycache__" not in f.parts}
        below = {x for x in out if x.startswith(d + "/")}
        if py and py <= expand(below):
            out = (out - below) | {d}
    return sorted(out)


def expand(deps: Iterable[str]) -> set[str]:
    """dvc.yaml deps under gramlib/ as files: a folder stands for every Python file below it."""
    out: set[str] = set()
    for d in deps:
        p = REPO / d
        if p.is_dir() and any(p.rglob("*.py")):
            out.update(str(f.relative_to(REPO)) for f in p.rglob("*.py") if "__pycache__" not in f.parts)
            out.update(x for xs in DATA_FILES.values() for x in xs if x.startswith(d.rstrip("/") + "/"))
        else:
            out.add(d)
    return out


def code_hash(modules: Iterable[str]) -> str:
    """sha256 (16 hex) over the closure's files: a fingerprint of the code a result depends on."""
    import hashlib

    h = hashlib.sha256()
    for rel in code_files(modules):
        p = REPO / rel
        for f in (sorted(p.rglob("*")) if p.is_dir() else [p]):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]
