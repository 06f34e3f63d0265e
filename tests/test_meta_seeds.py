"""Paired meta seeds (issue 14, item 3): a GRAM row's data seed s tunes from the meta-training run of
task-sampler seed s, so the row's spread over seeds includes the draw of meta-training tasks."""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import torch

from gramlib.config import get_profile, load_params
from gramlib.experiments.meta_runs import required_runs, run_config
from gramlib.experiments.spec import MethodSpec, experiment_runs, suite_config
from gramlib.experiments.suite import meta_dir, resolve
from gramlib.gram.run_names import seeded_run, split_run


@pytest.fixture
def params():
    return copy.deepcopy(load_params())


def test_run_names():
    assert seeded_run("coop_gram", 1) == "coop_gram" and seeded_run("coop_gram", 3) == "coop_gram@seed3"
    assert split_run("coop_gram@seed3") == ("coop_gram", 3) and split_run("coop_gram") == ("coop_gram", None)
    assert split_run("coop_gram_pretrain@seed2") == ("coop_gram_pretrain", 2)
    for bad in ("coop_gram@seed", "coop_gram@seedx", "coop_gram@seed0", "@seed2"):
        with pytest.raises(ValueError, match="expected <variant>@seed"):
            split_run(bad)
    with pytest.raises(ValueError, match=">= 1"):
        seeded_run("coop_gram", 0)


def test_a_seeded_run_is_its_variant_with_another_task_sampler_seed(params):
    prof = get_profile("mini")
    for name in ("vpt_gram", "coop_no_regulator", "coop_gram_pretrain"):
        kind, base = run_config(prof, name, params)
        kind2, seeded = run_config(prof, f"{name}@seed3", params)
        assert kind == kind2 and base["seed"] == 1 and seeded["seed"] == 3
        assert {**seeded, "seed": 1} == base  # nothing else differs (mini's 150-step image-side overlay included)
    params["meta"]["variants"]["coop_tokens_2"]["seed"] = 5
    with pytest.raises(ValueError, match=r"coop_tokens_2@seed2.*own seed is 1.*seed is 5"):
        run_config(prof, "coop_tokens_2@seed2", params)


def test_suite_default_pairs_every_meta_method_and_rows_may_opt_out(params):
    cfg = suite_config("mini", params)
    assert cfg.meta_seeds == "paired"
    assert cfg.methods["VPT+GRAM"].meta_seeds == "paired" and cfg.methods["CoOp"].meta_seeds is None
    assert [cfg.methods["VPT+GRAM"].meta_run(s) for s in (1, 2, 3)] == ["vpt_gram", "vpt_gram@seed2", "vpt_gram@seed3"]
    # Table 1's crossed robustness rows: one run for every data seed
    assert [cfg.methods[f"CoOp+GRAM (meta seed {k})"].meta_run(s) for k in (1, 2, 3) for s in (1, 3)] == [
        "coop_gram", "coop_gram", "coop_gram@seed2", "coop_gram@seed2", "coop_gram@seed3", "coop_gram@seed3"]
    exp = cfg.experiment("transfer16")
    assert set(experiment_runs(cfg, exp)) == {f"{v}{t}" for v in ("coop_gram", "vpt_gram", "unigram")
                                              for t in ("", "@seed2", "@seed3")}
    one = dataclasses.replace(exp, seeds=(1,))  # one data seed: the variants themselves, no repeat
    assert set(experiment_runs(cfg, one)) == {"coop_gram", "vpt_gram", "unigram"}
    params["suite"]["meta_seeds"] = "one"
    assert not any("@" in r for r in required_runs("paper", params) if not r.startswith("coop_gram"))
    params["suite"]["meta_seeds"] = "crossed"
    with pytest.raises(ValueError, match="suite.meta_seeds must be one of"):
        suite_config("mini", params)
    with pytest.raises(ValueError, match="'meta' methods only"):
        MethodSpec("x", learner="coop", meta_seeds="paired")
    with pytest.raises(ValueError, match="names one seeded run"):
        MethodSpec("x", meta="coop_gram@seed2", meta_seeds="paired")


def test_resolve_loads_the_run_of_the_units_seed(tmp_path):
    from gramlib.gram.regulator import RegulatorConfig, init_regulator
    from gramlib.gram.run_config import MetaTrainConfig
    from gramlib.io import save_safetensors, write_json

    prof = types.SimpleNamespace(artifacts=tmp_path)
    thetas = {}
    for seed in (1, 2, 3):
        out = meta_dir(prof, seeded_run("run", seed))
        thetas[seed] = {"ctx": torch.full((4, 8), float(seed))}
        save_safetensors(out / "theta_star.safetensors", thetas[seed])
        save_safetensors(out / "phi_star.safetensors", init_regulator(thetas[seed], RegulatorConfig()))
        write_json(out / "config.json", {"run": MetaTrainConfig(seed=seed).to_dict()})
    for seed in (1, 2, 3):
        _, _, theta0, _ = resolve(prof, MethodSpec("G", meta="run", meta_seeds="paired"), seed)
        assert torch.equal(theta0["ctx"], thetas[seed]["ctx"])
        _, _, theta0, _ = resolve(prof, MethodSpec("G", meta="run", meta_seeds="one"), seed)
        assert torch.equal(theta0["ctx"], thetas[1]["ctx"])
