"""Paper-profile set-up that the mini chain never exercises: DVC can track data/paper/{coop,cc3m}, the
mini world's caption strip list does not reach real CC3M, cuML is an optional, documented install."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gramlib.chc.stage import text_config

REPO = Path(__file__).resolve().parents[1]


def test_real_cc3m_captions_keep_their_words():
    paper, mini = text_config("paper"), text_config("mini")
    assert list(paper.strip_phrases) == [] and not paper.learns  # the paper's raw captions
    # mini learns its clean-up from the corpus: no list copied from the generator (issue 14)
    assert list(mini.strip_phrases) == [] and mini.learns


def test_dvc_add_data_paper_works_with_our_gitignore(tmp_path):
    """README step 1 (`dvc add data/paper/coop data/paper/cc3m`) in a fresh repository carrying our .gitignore."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    if not Path(dvc).exists():
        pytest.skip("dvc is not installed")
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run("git", "init", "-q").returncode == 0
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    assert run(dvc, "init", "-q").returncode == 0
    for sub in ("coop", "cc3m"):
        (tmp_path / "data" / "paper" / sub).mkdir(parents=True)
        (tmp_path / "data" / "paper" / sub / "x.txt").write_text("an image")
    res = run(dvc, "add", "data/paper/coop", "data/paper/cc3m")
    assert res.returncode == 0, res.stderr + res.stdout
    for sub in ("coop", "cc3m"):
        assert (tmp_path / "data" / "paper" / f"{sub}.dvc").is_file()
        # the .dvc file is for git, the data is not
        assert run("git", "check-ignore", "-q", f"data/paper/{sub}.dvc").returncode == 1
        assert run("git", "check-ignore", "-q", f"data/paper/{sub}/x.txt").returncode == 0
    # the world stage's description of the data sits beside it, ignored
    assert run("git", "check-ignore", "-q", "data/paper/world.json").returncode == 0


def test_cuml_extra_is_declared_and_documented():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("cuml") for dep in extras["paper-gpu"])
    assert '.[paper-gpu]' in (REPO / "README.md").read_text()


def test_paper_profile_settings_are_the_papers():
    """Issue 16 item 4: settings the paper states are not mini's CPU shortcuts on the paper profile."""
    from gramlib.config import load_params
    from gramlib.experiments.suite import suite_config
    from gramlib.restore.learner import RestoreConfig
    from gramlib.tuning.train import TrainConfig

    paper = suite_config("paper", load_params())
    assert paper.train == {}  # no per-learner deviation from the one recipe (mini has batch-size ones)
    for learner in ("coop", "cocoop", "vpt", "ivlp", "maple", "restore"):
        assert TrainConfig.for_learner(learner).epochs == 10  # GRAM §4.1; RESTORE §4.1's base-to-novel epochs
    cocoop = TrainConfig.for_learner("cocoop")
    assert (cocoop.batch_size, cocoop.lr) == (1, 0.002)  # CoCoOp's single recipe
    assert paper.augment == "aug:10"  # CoCoOp's crops (8-100 % of the area) and flips; mini crops 50-100 %
    # λ_fs = 1: RESTORE's own row carries no override (mini's is 0.001)
    assert "lambda_fs" not in paper.methods["RESTORE"].learner_opts and RestoreConfig().lambda_fs == 1.0
    for name in ("base2new", "transfer16"):  # CoCoOp is in the paper's tables (mini skips it for CPU time)
        assert "CoCoOp" in paper.experiments[name].methods and paper.experiments[name].shots == 16
    assert paper.tables["table6"][0] == "UNIGRAM"  # Tables 6-7 hosted by UNIGRAM, as in the paper
