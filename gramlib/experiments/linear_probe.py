"""Linear probe on frozen image features: how far a K-shot training set *can* be fitted.

CoOp's paper uses a linear probe (logistic regression on frozen CLIP image features) as a baseline.
Here it answers a question Figure 1b raises: overfitting needs room to fit. If a linear classifier
on the frozen features separates the base classes' K-shot images almost perfectly while a tuned
prompt stays near its test accuracy on those same images, the prompt (not the features) is what
limits fitting, and there is little for long training to overfit to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ProbeResult:
    train_accuracy: float  # percent, on the images the probe was fitted on
    test_accuracy: float  # percent
    n_train: int
    n_test: int
    n_classes: int
    C: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 C: float = 100.0, max_iter: int = 5000) -> ProbeResult:
    """Multinomial logistic regression on L2-normalised features (CLIP's cosine geometry).

    A large ``C`` (weak L2 penalty) measures separability, the ceiling of what any linear read-out of
    these features could fit; CoOp's own probe tunes ``C`` on validation data for test accuracy instead.
    """
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_x.ndim != 2 or len(train_x) != len(train_y):
        raise ValueError(f"train features must be (N, D) with N = {len(train_y)} labels, got {train_x.shape}")
    if test_x.ndim != 2 or len(test_x) != len(test_y) or test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test features must be (M, {train_x.shape[1]}) with M = {len(test_y)} labels, got {test_x.shape}")
    if len(np.unique(train_y)) < 2:
        raise ValueError("a linear probe needs at least two classes in the training set")
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(_unit_rows(train_x), train_y)
    return ProbeResult(100.0 * clf.score(_unit_rows(train_x), train_y), 100.0 * clf.score(_unit_rows(test_x), test_y),
                       len(train_y), len(test_y), len(np.unique(train_y)), float(C))


def base_class_probe(env: Any, dataset: str, shots: int, seed: int, *, C: float = 100.0) -> ProbeResult:
    """The probe on base2new's training set (the base classes' K shots of ``seed``) and base test split.

    Same few-shot sample, base/new rule and frozen features as the prompt learners of the suite.
    """
    from gramlib.data.coop import subsample_dataset
    from gramlib.tuning.inputs import view_bank
    from gramlib.experiments.protocols import fewshot_dataset

    base = subsample_dataset(fewshot_dataset(env, dataset, shots, seed), "base")
    tr = view_bank(env.backbone, base.train, "none", cache_dir=env.feature_cache)  # eval transform, one view
    te = view_bank(env.backbone, base.test, "none", cache_dir=env.feature_cache)
    return linear_probe(tr.views[0].cpu().numpy(), tr.labels.numpy(), te.views[0].cpu().numpy(), te.labels.numpy(), C=C)
