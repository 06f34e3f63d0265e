import dataclasses
import re

import pytest

from gramlib.config import get_profile, load_params
from gramlib.io import atomic_path, read_json, write_json


def test_profiles_are_data():
    params = load_params()
    assert params["profile"] == "mini"
    for name in ("smoke", "mini", "paper"):
        prof = get_profile(name)
        assert prof.name == name and prof.datasets
    assert get_profile("paper").world is None
    assert get_profile("paper").backbone.pretrained == "openai"


def test_unknown_profile_names_the_parameter():
    with pytest.raises(ValueError, match=r"unknown profile 'nope'.*'profile'.*known: \['mini', 'paper', 'paper_fixture', 'smoke'\]"):
        get_profile("nope")


def test_unknown_key_in_a_profile_block_is_named():
    params = load_params()
    params["profiles"]["smoke"]["world"]["n_webb"] = 3
    with pytest.raises(ValueError, match=r"^params.yaml: profiles.smoke.world: unknown key 'n_webb'$"):
        get_profile("smoke", params=params)


# ---- params.yaml -> typed, frozen dataclasses (gramlib.config.typed), one overlay mechanism ---------------

PROFILES = ("smoke", "mini", "paper")


def _resolve_all(name: str, params: dict) -> dict:
    """Every section of params.yaml as one profile sees it."""
    from gramlib.chc.stage import chc_config, text_config
    from gramlib.experiments.spec import suite_config
    from gramlib.gram.run_config import meta_train_config
    from gramlib.gram.pretrain_prompts import pretrain_config

    out = {"profile": get_profile(name, params), "chc": chc_config(name, params),
           "text": text_config(name, params), "suite": suite_config(name, params)}
    for v in [None, *params["meta"]["variants"]]:
        out[f"meta/{v}"] = meta_train_config(name, v, params)
        out[f"pretrain/{v}"] = pretrain_config(name, v, params)
    return out


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_resolves_every_section(name):
    resolved = _resolve_all(name, load_params())
    for key, cfg in resolved.items():
        assert dataclasses.is_dataclass(cfg), key
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, dataclasses.fields(cfg)[0].name, None)
    assert not hasattr(resolved["profile"], "extra")


def test_the_top_level_has_no_unknown_key(tmp_path):
    import yaml

    params = load_params()
    assert "shots" not in params  # each experiment has its own (suite.experiments.<e>.shots)
    for key in ("chc", "meta", "suite"):
        assert "profiles" not in params[key]  # overlays live in profiles.<name>.<section>
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**params, "shots": 16}))
    with pytest.raises(ValueError, match=r"^params.yaml: unknown key 'shots'$"):
        load_params(path)


def _set(params: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    node = params
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = value


# (profile resolved, key path in params.yaml ("/"-separated), value): a typo'd key at several depths
TYPOS = [
    ("mini", "profiles/mini/datasetz", ["x"]),
    ("mini", "profiles/mini/world/n_webb", 3),
    ("paper", "profiles/paper/backbone/precission", "bf16"),
    ("mini", "chc/topics/min_cluster_siz", 3),
    ("mini", "chc/topics/vocab/stop_wordz", None),
    ("paper", "profiles/paper/chc/topics/fit_sampel", 10),
    ("mini", "chc/text/strip_phrase", []),
    ("mini", "meta/meta/lr_thetaa", 0.1),
    ("mini", "meta/meta/regulator/gama_init", 0.9),
    ("mini", "meta/stepz", 3),
    ("smoke", "profiles/smoke/meta/tasks/wayz", 3),
    ("mini", "meta/variants/unigram/learner_cgf", {}),  # another variant than the one resolved
    ("mini", "profiles/mini/meta/variants/vpt_gram/meta/meta_bach", 2),
    ("mini", "meta/pretrain/epoch", 1),
    ("mini", "suite/experiments/base2new/shotz", 16),
    ("smoke", "profiles/smoke/suite/experiments/overfit/epoch", 3),
    ("mini", "suite/methods/CoOp/learner_opt", {}),
    ("mini", "suite/methods/RESTORE/learner_opts/lambda_fs", 0.1),  # learner_opts is free-form: no typo
    ("mini", "suite/worker", 2),
    ("mini", "suite/train/coop/batchsize", 8),
]


@pytest.mark.parametrize("profile, path, value", TYPOS, ids=[t[1] for t in TYPOS])
def test_a_typo_fails_at_once_naming_its_key_path(profile, path, value):
    params = load_params()
    _set(params, path, value)
    *parents, key = path.split("/")
    if key == "lambda_fs":
        _resolve_all(profile, params)
        return
    with pytest.raises(ValueError, match=rf"^params.yaml: {re.escape('.'.join(parents))}: unknown key '{key}'$"):
        _resolve_all(profile, params)


# (profile, key path, a string where a number belongs)
WRONG_TYPES = [
    ("mini", "profiles/mini/backbone/lr", "1e-3", "float"),
    ("smoke", "profiles/smoke/world/n_web", "8000", "int"),
    ("mini", "chc/filter/threshold", "10", "float"),
    ("paper", "profiles/paper/chc/topics/fit_sample", "200000", "int | None"),
    ("mini", "meta/meta/lr_theta", "1e-3", "float"),
    ("mini", "meta/seed", "1", "int"),
    ("mini", "profiles/mini/meta/variants/vpt_gram/steps", "150", "int"),  # the YAML anchor of the image-side runs
    ("mini", "meta/pretrain/lr", "2e-3", "float"),
    ("paper", "suite/experiments/base2new/shots", "16", "int"),
    ("mini", "profiles/mini/suite/train/joint/lr", "0.002", "float"),
    ("mini", "suite/methods/CoOp init random 1/init_seed", "101", "int | None"),
]


@pytest.mark.parametrize("profile, path, value, expected", WRONG_TYPES, ids=[t[1] for t in WRONG_TYPES])
def test_a_string_where_a_number_belongs_names_its_key_path(profile, path, value, expected):
    params = load_params()
    _set(params, path, value)
    message = f"params.yaml: {'.'.join(path.split('/'))}: expected {expected}, got str {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _resolve_all(profile, params)


def test_an_int_is_a_float_but_a_bool_is_not_a_number():
    from gramlib.gram.run_config import meta_train_config

    params = load_params()
    params["profiles"]["mini"]["backbone"]["lr"] = 1
    params["meta"]["meta"]["alpha"] = 1
    lr = get_profile("mini", params).backbone.lr
    alpha = meta_train_config("mini", "coop_gram", params).meta.alpha
    assert (lr, alpha) == (1.0, 1.0) and type(lr) is float and type(alpha) is float
    params["profiles"]["mini"]["backbone"]["lr"] = True
    with pytest.raises(ValueError, match=r"^params.yaml: profiles.mini.backbone.lr: expected float, got bool True$"):
        get_profile("mini", params)
    params["profiles"]["mini"]["backbone"]["lr"] = 0.001
    params["profiles"]["mini"]["world"]["n_web"] = True
    with pytest.raises(ValueError, match=r"^params.yaml: profiles.mini.world.n_web: expected int, got bool True$"):
        get_profile("mini", params)


def test_a_string_where_a_list_belongs_fails():
    params = load_params()
    params["profiles"]["mini"]["datasets"] = "mini_imagenet"
    with pytest.raises(ValueError, match=r"profiles.mini.datasets: expected tuple\[str, \.\.\.\], got str"):
        get_profile("mini", params)


def test_overlays_merge_over_the_base_section_for_their_profile_only():
    from gramlib.chc.stage import chc_config
    from gramlib.experiments.spec import suite_config
    from gramlib.gram.run_config import meta_train_config

    params = load_params()
    # chc: profiles.paper.chc.topics merges key by key over chc.topics
    assert chc_config("paper", params).topics.min_cluster_size == 200
    assert chc_config("mini", params).topics.min_cluster_size == params["chc"]["topics"]["min_cluster_size"] == 60
    assert chc_config("paper", params).topics.n_neighbors == params["chc"]["topics"]["n_neighbors"]  # kept
    # meta: profiles.smoke.meta over meta; profiles.mini.meta.variants.vpt_gram over meta.variants.vpt_gram
    assert meta_train_config("smoke", "coop_gram", params).steps == 20
    assert meta_train_config("mini", "coop_gram", params).steps == 400
    assert meta_train_config("paper", "coop_gram", params).steps == 400
    vpt = meta_train_config("mini", "vpt_gram", params)
    assert (vpt.steps, vpt.learner, vpt.learner_cfg) == (150, "vpt", {"n_tokens": 4})
    assert (vpt.meta.meta_batch, vpt.meta.lr_theta, vpt.tasks.query, vpt.tasks.ways) == (2, 0.001, 5, 5)
    assert meta_train_config("paper", "vpt_gram", params).meta.meta_batch == 4
    # suite: profiles.smoke.suite over suite
    # compute: profiles.<name>.compute over compute
    from gramlib.compute import compute_config

    assert compute_config("smoke", params).backend == "local" and compute_config("mini", params).backend == "ray"
    assert (compute_config("mini", params).num_cpus, compute_config("paper", params).num_cpus) == (2, None)
    assert compute_config("paper", params).unit.gpus == 0.25 and compute_config("paper", params).meta_unit.gpus == 1
    assert suite_config("smoke", params).experiment("base2new").shots == 2
    assert suite_config("paper", params).experiment("base2new").shots == 16
    # a new overlay acts on its profile alone
    params["profiles"]["paper"]["suite"] = {"augment": "aug:4", "experiments": {"transfer4": {"shots": 8}}}
    params["profiles"]["mini"]["chc"] = {"filter": {"threshold": 5}}
    params["profiles"]["paper"]["meta"] = {"tasks": {"ways": 4}}
    assert (suite_config("paper", params).augment, suite_config("mini", params).augment) == ("aug:4", "aug:10:0.5")
    assert suite_config("paper", params).experiment("transfer4").shots == 8
    assert suite_config("paper", params).experiment("transfer4").protocol == "transfer"  # merged, not replaced
    assert (chc_config("mini", params).filter.threshold, chc_config("smoke", params).filter.threshold) == (5.0, 10.0)
    assert chc_config("mini", params).filter.rule == "percentile"
    assert meta_train_config("paper", "unigram", params).tasks.ways == 4
    assert meta_train_config("mini", "unigram", params).tasks.ways == 5


def test_paper_profile_has_no_world_to_generate(tmp_path):
    """Without a world block the world stage checks the profile's own data instead of generating any."""
    from gramlib.world.build import build_world

    with pytest.raises(FileNotFoundError, match=r"data root .*nowhere not found .*put CoOp's DATA/ folder at"):
        build_world(get_profile("paper", data_root=str(tmp_path / "nowhere")))
    assert not (tmp_path / "nowhere").exists()  # nothing was generated


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed half-way")
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: malformed JSON"):
        read_json(path)
