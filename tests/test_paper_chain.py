"""The paper profile's whole chain on stand-ins in the real formats (issue 16): `dvc repro` with the
`paper_fixture` profile, exactly as the README's paper-profile section says, in a copy of the repository.

`gramlib paper-fixture` writes CoOp's DATA/ layout for all 11 datasets and the 4 ImageNet variants
(ImageNet's 1,000 classes), img2dataset CC3M shards and random ViT-B/16 weights; then DVC runs every stage
and every notebook through Papermill on ViT-B/16 at 224 px, on CPU, with step counts shrunk through
params.yaml's `profiles.paper_fixture` only. About 25 minutes on 2 cores: marked `paper_chain`, run by CI
(`.ci/run`) after the default suite, deselected otherwise (`pytest -m paper_chain` runs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gramlib.config import REPO
from test_chain import FIGURES, OWN_FIGURES, OWN_TABLES, TABLES, _tree_files, run_in_copy

pytestmark = pytest.mark.paper_chain


def _run(copy: Path, *cmd: str) -> subprocess.CompletedProcess:
    return run_in_copy(copy, *cmd)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    copy = tmp_path_factory.mktemp("paper_chain") / "repo"
    for f in _tree_files(REPO):
        if f.startswith(("reports/", "notes/", "benchmarks/results/")):
            continue
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, copy / f)
    (copy / "dvc.lock").unlink(missing_ok=True)
    gramlib = str(Path(sys.executable).parent / "gramlib")
    # README, paper profile: the data (here: the stand-ins), tracked by DVC, then one `dvc exp run`-style repro
    _run(copy, gramlib, "paper-fixture", "--profile", "paper_fixture")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "paper fixture chain"]):
        _run(copy, *cmd)
    dvc = [sys.executable, "-m", "dvc"]
    _run(copy, *dvc, "config", "core.analytics", "false")
    _run(copy, *dvc, "add", "data/paper_fixture/coop", "data/paper_fixture/cc3m")
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params.update(profile="paper_fixture", reports="reports/paper_fixture")
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    _run(copy, *dvc, "repro")
    return copy


def test_every_table_figure_and_the_index(chain):
    import pandas as pd

    reports = chain / "reports" / "paper_fixture"
    for stem in TABLES + OWN_TABLES:
        df = pd.read_csv(reports / "tables" / f"{stem}.csv")
        assert len(df) > 0 and df["mean"].between(0, 100).all(), stem
        assert json.loads((reports / "tables" / f"{stem}.provenance.json").read_text())["profile"] == "paper_fixture"
    t1 = pd.read_csv(reports / "tables" / "table1_base_to_new.csv")
    assert "eurosat" in set(t1["dataset"])
    t2 = pd.read_csv(reports / "tables" / "table2_cross_domain.csv")  # ImageNet and its four variants
    assert {"imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"} <= set(t2["dataset"])
    for stem in FIGURES + OWN_FIGURES:
        assert (reports / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
    index = (reports / "README.md").read_text()
    assert all(f"tables/{s}.md" in index for s in TABLES + OWN_TABLES)
    assert (reports / "zero_shot.csv").exists() and (reports / "chc" / "metrics.json").exists()
    assert not (chain / "reports" / "tables").exists()  # the mini profile's reports are left alone
    executed = sorted(p.name for p in (chain / "reports" / "paper_fixture" / "notebooks").glob("*.ipynb"))
    assert len(executed) >= 15, executed
    assert (chain / "reports" / "paper_fixture" / "site" / "index.html").exists()  # the report site (issue 19)


def test_the_backbone_was_vit_b16_at_224_with_quick_gelu(chain):
    bb = json.loads((chain / "artifacts" / "paper_fixture" / "backbone" / "backbone.json").read_text())
    assert bb["arch"] == "ViT-B-16" and bb["image_size"] == 224 and bb["quick_gelu"] is True
    assert bb["weights"] == "data/paper_fixture/weights/ViT-B-16-random.pt"


def test_imagenet_was_tuned_over_its_1000_classes(chain):
    world = json.loads((chain / "data" / "paper_fixture" / "world.json").read_text())
    assert world["datasets"]["imagenet"]["n_classes"] == 1000 and len(world["datasets"]) == 15
    import pandas as pd

    rows = pd.read_csv(chain / "artifacts" / "paper_fixture" / "suite" / "transfer16.csv")
    assert {"CLIP", "CoOp", "CoOp+GRAM"} <= set(rows.loc[rows.dataset == "imagenet", "method"])


def test_second_repro_does_nothing(chain):
    status = _run(chain, sys.executable, "-m", "dvc", "status").stdout
    assert "up to date" in status.lower() or status.strip() == "", status
