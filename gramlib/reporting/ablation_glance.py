"""GRAM's two parts at a glance (issue 15, item 6; notebook 03): θ* and R^φ*, each on or off.

The four rows are base-to-new runs on the same datasets and data seeds: θ* with R^φ* (CoOp+GRAM),
θ* with R = identity, the hand-crafted θ ("a photo of a") with R^φ*, and plain CoOp (neither).  A
(dataset, seed) pair is one paired unit: every row saw the same K shots and the same test images, so
the difference of a row from the reference is measured per unit, and its Student-t interval (the units'
spread and the draw of the test images, :func:`gramlib.reporting.tables.paired_difference`) and a
sign-flip permutation p-value over the units are taken.  A difference whose interval contains 0 (or whose p
is not below 5 %) is "not resolved", whatever its mean.
"""

from __future__ import annotations

import pandas as pd

from gramlib.stats import resolved
from gramlib.reporting.tables import fold_scores, paired_difference, unit_scores

GLANCE_COLUMNS = ["method", "metric", "mean", "delta", "ci_low", "ci_high", "p_value", "n_pairs", "verdict"]
METRICS = ("base", "new", "H")


def verdict(lo: float, hi: float, p: float | None = None, level: float = 0.95) -> str:
    """higher / lower when resolved (:func:`gramlib.stats.resolved`: interval excludes 0, p below 1 - level)."""
    if not resolved(lo, hi, p, level):
        return "not resolved"
    return "higher" if lo > 0 else "lower"


def ablation_glance(rows: pd.DataFrame, methods: list[str], reference: str, level: float = 0.95) -> pd.DataFrame:
    """One :data:`GLANCE_COLUMNS` row per (method, metric): the mean over the (dataset, seed) units all
    ``methods`` ran, and the paired difference from ``reference`` with its ``level`` interval."""
    per = unit_scores(rows)
    per = per[per["method"].isin(methods)]
    missing = sorted(set(methods) - set(per["method"]))
    if missing:
        raise ValueError(f"ablation_glance: no base-to-new rows for {missing}")
    wide = per.pivot_table(index=["dataset", "seed"], columns="method", values=list(METRICS)).dropna()
    if reference not in methods:
        raise ValueError(f"ablation_glance: reference {reference!r} is not one of {methods}")
    keys = pd.MultiIndex.from_frame(per[["dataset", "seed"]])
    per = per[keys.isin(wide.index)]  # the units every method ran
    folds = fold_scores(rows[(rows["protocol"] == "base2new") & rows["method"].isin(methods)])
    out = []
    for method in methods:
        for metric in METRICS:
            x, ref = wide[(metric, method)], wide[(metric, reference)]
            if method == reference:
                lo = hi = p = float("nan")
            else:
                diff = paired_difference(per, folds, reference, method, metric, level=level)
                lo, hi, p = diff["ci_low"], diff["ci_high"], diff["p_value"]
            out.append({"method": method, "metric": metric, "mean": float(x.mean()),
                        "delta": float((x - ref).mean()), "ci_low": lo, "ci_high": hi, "p_value": p,
                        "n_pairs": int(len(x)),
                        "verdict": "reference" if method == reference else verdict(lo, hi, p, level)})
    return pd.DataFrame(out, columns=GLANCE_COLUMNS)


__all__ = ["GLANCE_COLUMNS", "ablation_glance", "verdict"]
