"""Zero-shot CLIP (eq. 1) with one hand-crafted template per dataset, as CoOp and CoCoOp report it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from gramlib.clip.factory import Backbone
from gramlib.clip.features import encode_images, encode_texts, eval_transform
from gramlib.data.coop import CoopDataset, load_dataset

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


def class_text_features(backbone: Backbone, classnames: list[str], template: str, cache_dir) -> torch.Tensor:
    return encode_texts(backbone, [template.format(c) for c in classnames], cache_dir)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == labels).float().mean()) if len(labels) else float("nan")


@dataclass
class ZeroShotResult:
    dataset: str
    predictions: torch.Tensor
    labels: torch.Tensor
    styles: list[str | None]
    n_classes: int


def zero_shot(backbone: Backbone, dataset: CoopDataset, template: str, cache_dir, split: str = "test") -> ZeroShotResult:
    data = dataset.split(split)
    img = encode_images(backbone, [d.impath for d in data], eval_transform(backbone), cache_dir,
                        desc=f"{dataset.name} {split}")
    txt = class_text_features(backbone, dataset.classnames, template, cache_dir)
    pred = (img @ txt.T).argmax(dim=-1)
    labels = torch.tensor([d.label for d in data])
    return ZeroShotResult(dataset.name, pred, labels, _styles(dataset, data), dataset.num_classes)


def _styles(dataset: CoopDataset, data) -> list[str | None]:
    """Per-image style from the mini world's ``styles.csv`` (None for real datasets)."""
    path = Path(dataset.image_dir).parent / "styles.csv"
    if not path.exists():
        return [None] * len(data)
    table = dict(pd.read_csv(path).itertuples(index=False, name=None))
    return [table.get(Path(d.impath).relative_to(dataset.image_dir).as_posix()) for d in data]


def zero_shot_table(backbone: Backbone, coop_root: str | os.PathLike, names: list[str], templates: dict[str, str],
                    cache_dir) -> pd.DataFrame:
    """Columns ``dataset,style,accuracy,n_test,n_classes,chance``; style ``all`` is the whole split."""
    rows = []
    for name in names:
        ds = load_dataset(coop_root, name)
        res = zero_shot(backbone, ds, template_for(templates, name), cache_dir)
        correct = (res.predictions == res.labels)
        groups = {"all": torch.ones_like(correct)}
        for style in sorted({s for s in res.styles if s}):
            groups[style] = torch.tensor([s == style for s in res.styles])
        for style, mask in groups.items():
            n = int(mask.sum())
            rows.append({"dataset": name, "style": style, "accuracy": float(correct[mask].float().mean()) if n else float("nan"),
                         "n_test": n, "n_classes": res.n_classes, "chance": 1.0 / res.n_classes})
    return pd.DataFrame(rows, columns=["dataset", "style", "accuracy", "n_test", "n_classes", "chance"])
