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
from gramlib.data.templates import COOP_TEMPLATES, GENERIC_TEMPLATE, dataset_templates, template_for  # noqa: F401

log = logging.getLogger(__name__)

def class_text_features(backbone: Backbone, classnames: list[str], template: str, cache_dir) -> torch.Tensor:
    """One prompt per class, over the positions the prompts use (ImageNet's 1,000 on ViT-B/16: ~15 of 77)."""
    return encode_texts(backbone, [template.format(c) for c in classnames], cache_dir, used_positions=True)


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
