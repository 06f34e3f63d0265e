"""Each dataset's hand-crafted prompt template: CoOp's ``CUSTOM_TEMPLATES`` for the paper's datasets, the
world manifest's for a generated world. Data about the datasets, so it lives with them (the world stage
describes a profile's data without importing any model code)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# CoOp's CUSTOM_TEMPLATES for the paper profile's datasets, keyed by CoOp's own dataset names (the
# registry's, gramlib.data.coop.COOP_DATASETS); look them up with :func:`template_for`, which also
# accepts the params names (oxford_pets, dtd, ...).
COOP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
GENERIC_TEMPLATE = "a photo of a {}."


def dataset_templates(data_root: str | os.PathLike) -> dict[str, str]:
    """Templates of the profile's datasets: the world manifest's (``<data_root>/world.json``, mini)
    or CoOp's (paper). ``data_root`` is the profile's root, not its ``coop/`` folder."""
    from gramlib.io import read_json

    manifest = Path(data_root) / "world.json"
    if manifest.exists():
        return {name: d["template"] for name, d in read_json(manifest)["datasets"].items()}
    return dict(COOP_TEMPLATES)


def template_for(templates: dict[str, str], dataset: str) -> str:
    """The hand-crafted template of ``dataset``, whichever of its names is used (params name such as
    ``oxford_pets`` or CoOp's ``OxfordPets``); the generic one only for a dataset nobody wrote one for."""
    if dataset in templates:
        return templates[dataset]
    from gramlib.data.coop import get_spec

    spec = get_spec(dataset)
    if spec is not None:
        for name, template in templates.items():
            if get_spec(name) == spec:
                return template
    log.warning("no hand-crafted template for dataset %r: using %r", dataset, GENERIC_TEMPLATE)
    return GENERIC_TEMPLATE
