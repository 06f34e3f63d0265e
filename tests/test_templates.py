"""Hand-crafted templates per dataset: every template learner and every transfer target speaks its own
dataset's template (CoOp's CUSTOM_TEMPLATES on the paper profile, the world's on mini)."""

from __future__ import annotations

import dataclasses

import pytest

from gramlib.clip.zeroshot import COOP_TEMPLATES, GENERIC_TEMPLATE, dataset_templates, template_for
from gramlib.config import get_profile
from gramlib.experiments import protocols
from gramlib.experiments.protocols import load_env, run_unit, unit_data

# CoOp's CUSTOM_TEMPLATES (trainers/coop.py), written out here by hand, keyed by the params names
COOP = {
    "imagenet": "a photo of a {}.", "caltech101": "a photo of a {}.", "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.", "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.", "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.", "dtd": "{} texture.", "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.", "imagenetv2": "a photo of a {}.", "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.", "imagenet_r": "a photo of a {}.",
}
REGISTRY_NAMES = {"oxford_pets": "OxfordPets", "dtd": "DescribableTextures", "eurosat": "EuroSAT",
                  "fgvc_aircraft": "FGVCAircraft", "food101": "Food101", "ucf101": "UCF101",
                  "oxford_flowers": "OxfordFlowers", "imagenet_sketch": "ImageNetSketch"}


def test_paper_templates_by_params_and_registry_names():
    paper = get_profile("paper")
    names = [*paper.datasets, *paper.variants]
    assert set(names) == set(COOP)
    for name in names:
        assert template_for(COOP_TEMPLATES, name) == COOP[name], name
    for params_name, registry_name in REGISTRY_NAMES.items():  # the loaders' CoopDataset.name
        assert template_for(COOP_TEMPLATES, registry_name) == COOP[params_name], registry_name
    assert template_for(COOP_TEMPLATES, "some_new_dataset") == GENERIC_TEMPLATE


@pytest.fixture(scope="module")
def env(smoke, tmp_path_factory):
    return load_env(smoke, feature_cache=tmp_path_factory.mktemp("features"))


def test_env_reads_the_world_templates(env):
    world = dataset_templates(env.profile.root)
    assert env.templates == world
    assert world["mini_patterns_blueprint"] == "a photo of a {}." and world["mini_imagenet"] == "a photo of a {}."


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["zeroshot", "vpt", "vpt_deep"])
def test_every_template_learner_and_transfer_target_uses_its_dataset_template(env, monkeypatch, method):
    """Zero-shot and VPT rows of a transfer unit: each target evaluated with its own dataset's template
    (d68db27 gave every target "a photo of a {}." or the source's), training with the source's."""
    seen: list[tuple[str, str]] = []
    real_eval = protocols.eval_inputs

    def record_eval(learner, backbone, data, classnames, **kw):
        seen.append((len(seen), learner.template))
        return real_eval(learner, backbone, data, classnames, **kw)

    def record_train(learner, *a, **kw):
        seen.append(("train", learner.template))
        raise _Stop

    monkeypatch.setattr(protocols, "eval_inputs", record_eval)
    monkeypatch.setattr(protocols, "train_inputs", record_train)
    # the world's targets all use "a photo of a {}." (issue 14's design): give each dataset a template of
    # its own, as the CoOp datasets have, so a learner that takes another dataset's template is caught
    world = {name: f"{{}}, from {name}." for name in dataset_templates(env.profile.root)}
    world["mini_patterns_blueprint"] = "{} texture."
    env = dataclasses.replace(env, templates=world)
    src, targets = unit_data(env, "transfer", env.profile.source, 1, 1)
    train_set = None if method == "zeroshot" else src
    try:
        run_unit(env, "transfer", method, 1, 1, train_set, targets, train={"epochs": 2})
    except _Stop:
        pass
    evals = [tpl for i, tpl in seen if i != "train"]
    assert evals == [world[t.dataset] for t in targets]
    if method != "zeroshot":
        assert ("train", world[env.profile.source]) in seen
    # base-to-new on a patterns dataset: both splits with its "{} texture."
    seen.clear()
    base, b2n = unit_data(env, "base2new", "mini_patterns_blueprint", 1, 1)
    try:
        run_unit(env, "base2new", method, 1, 1, None if method == "zeroshot" else base, b2n, train={"epochs": 2})
    except _Stop:
        pass
    assert [tpl for i, tpl in seen] == ["{} texture."] * len(seen) and len(seen) >= 2
