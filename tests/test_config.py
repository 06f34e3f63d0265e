import dataclasses

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
    with pytest.raises(ValueError, match=r"unknown profile 'nope'.*'profile'.*known: \['mini', 'paper', 'smoke'\]"):
        get_profile("nope")


def test_unknown_key_in_a_profile_block_is_named():
    params = load_params()
    params["profiles"]["smoke"]["world"]["n_webb"] = 3
    with pytest.raises(ValueError, match=r"profiles.smoke.world: unknown key\(s\) \['n_webb'\]"):
        get_profile("smoke", params=params)


def test_paper_profile_has_no_world_to_generate():
    from gramlib.world.build import build_world

    with pytest.raises(ValueError, match="no 'world' block"):
        build_world(get_profile("paper"))


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
