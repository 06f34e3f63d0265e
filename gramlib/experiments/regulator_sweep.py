"""Does R^phi learn, and under which settings? A sweep of meta-training runs (issue 15, item 1).

Each setting is a set of overrides of one meta-training variant (default ``coop_gram``, with its held-out
topics): lambda_2, phi's initialisation, the inner rate alpha, inner steps, meta-steps, the paper's
literal regulator input.  Every run reports what its held-out measurement found
(:mod:`gramlib.gram.regulator_effect`): ``regulator_departure`` (how far phi left its start, in units
of ||g||), the held-out cosines before/after, the paired interval of what R adds after training, and
whether the meta-objective (eq. 10) fell.  Not a DVC stage (a few minutes on the mini profile): run
``gramlib regulator-sweep --profile mini``; runs are kept and a re-run resumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from gramlib.config import Profile, deep_merge
from gramlib.gram.regulator_effect import paired_interval
from gramlib.gram.run_config import MetaTrainConfig, meta_train_config
from gramlib.io import read_json, stable_hash

#: name -> overrides of the variant's configuration (nested like params.yaml's meta blocks).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "lr_phi_1e-3": {"meta": {"lr_phi": 1e-3}},
    "lr_phi_1e-2": {"meta": {"lr_phi": 1e-2}},
    "lr_phi_1e-2_steps_1200": {"meta": {"lr_phi": 1e-2}, "steps": 1200},
    "gamma_init_0.5": {"meta": {"regulator": {"gamma_init": 0.5}}},
    "alpha_0.3": {"meta": {"alpha": 0.3}},
    "alpha_3": {"meta": {"alpha": 3.0}},
    "inner_steps_2": {"meta": {"inner_steps": 2}},
    "steps_1200": {"steps": 1200},
    "paper_literal": {"meta": {"regulator": {"input_norm": "none", "beta_scale": "none"}}},
    "paper_literal_sgd_sum": {"meta": {"optimizer": "sgd", "reduction": "sum",
                                       "regulator": {"input_norm": "none", "beta_scale": "none"}}},
}


def setting_config(base: MetaTrainConfig, overrides: Mapping[str, Any], name: str = "setting") -> MetaTrainConfig:
    """``base`` with ``overrides`` deep-merged, checked strictly (a typo names its key path)."""
    return MetaTrainConfig.from_dict(deep_merge(base.to_dict(), overrides), where=f"regulator sweep {name}")


def summary_row(name: str, out: Path) -> dict[str, Any]:
    """One row of the sweep from a finished run's summary and held-out per-task rows."""
    s = read_json(out / "summary.json")
    per_task = pd.read_csv(out / "regulator_effect.csv")
    after = per_task[per_task["stage"] == "after"]
    lo, hi = paired_interval(after["cos_raw"], after["cos_regulated"])
    return {"setting": name, "regulator_departure": s.get("regulator_departure"),
            "heldout_cos_raw_before": s.get("heldout_cos_raw_before"),
            "heldout_cos_regulated_before": s.get("heldout_cos_regulated_before"),
            "heldout_cos_raw_after": s.get("heldout_cos_raw_after"),
            "heldout_cos_regulated_after": s.get("heldout_cos_regulated_after"),
            "added_ci_low": lo, "added_ci_high": hi,
            "meta_loss_start": s.get("meta_loss_start"), "meta_loss_end": s.get("meta_loss_end"),
            "steps": s.get("steps"), "train_s": s.get("train_s")}


def run_sweep(profile: Profile, out_dir: str | os.PathLike, variant: str = "coop_gram",
              settings: Mapping[str, Mapping[str, Any]] = SETTINGS, params: dict | None = None) -> pd.DataFrame:
    """Meta-train every setting (a finished run is kept, a killed one resumes) and tabulate them."""
    from gramlib.gram.meta_data import load_meta_data
    from gramlib.gram.meta_train import build_meta_learner, meta_train

    base = meta_train_config(profile.name, variant, params)
    if base.heldout_topics <= 0:
        raise ValueError(f"meta.heldout_topics is {base.heldout_topics}: the sweep measures on held-out topics")
    out_dir = Path(out_dir)
    backbone, learner = build_meta_learner(profile, base)
    data = load_meta_data(profile, base, backbone, features=learner.caches_image_features)
    rows = []
    for name, over in settings.items():
        cfg = setting_config(base, over, name)
        out = out_dir / f"{name}-{stable_hash(cfg.to_dict(), 8)}"  # a changed setting never resumes another's run
        if not (out / "summary.json").exists():
            meta_train(profile, cfg, out, data=data, backbone=backbone)
        rows.append(summary_row(name, out))
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False, header=len(rows) == 1), flush=True)
    return pd.DataFrame(rows)


__all__ = ["SETTINGS", "run_sweep", "setting_config", "summary_row"]
