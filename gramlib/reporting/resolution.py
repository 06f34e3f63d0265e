"""How large a run would resolve a difference of a given size: the paired checks' errors, projected.

A paired check (:func:`gramlib.reporting.tables.paired_difference`) counts two independent errors: the
spread of the per-unit differences over the (dataset, seed) units, whose variance of the mean shrinks as
1 / (datasets x seeds), and the draw of the test images, estimated from class-stratified folds of the one test
set every seed is scored on (:mod:`gramlib.test_draw`), which no number of seeds averages away and which shrinks
as 1 / (test images per class). Scaling each part by its own count answers the planning question the project's
"resolve about one point" goal asks: how many seeds, and how many test images per class, would give an interval
of half-width ``target``? The projection assumes the per-unit spread and the per-image noise stay what they are
at today's size (the errors' estimates themselves scatter, so a projection is a plan, not a result).

Where the paired interval of the tables counts the units as independent (so it includes the datasets' spread
of the effect, and shrinks with seeds as if that spread did too), so does the projection: it plans the interval
the tables would print.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from gramlib.reporting.tables import check_inputs, paired_parts
from gramlib.test_draw import t_interval, with_test_draw

PLAN_COLUMNS = ["pair", "metric", "mean_difference", "n_datasets", "n_seeds", "half_width", "target", "test_scale",
                "seeds_needed", "floor"]


def _half_width(part: tuple[float, float], level: float) -> float:
    """t_df · sqrt(variance) of a (variance, df) part: :func:`gramlib.test_draw.t_interval` around 0."""
    return t_interval(0.0, part[0], part[1], level)[1]


def projected_half_width(unit_variance: float, n_datasets: int, seeds: int, test_part: tuple[float, float],
                         test_scale: float = 1.0, level: float = 0.95) -> float:
    """The paired interval's half-width with ``seeds`` seeds per dataset and ``test_scale`` times today's test
    images per class: units' variance ``unit_variance`` / (datasets x seeds) with that many units less one
    df, plus the test draw's (variance / ``test_scale``, its df; NaN variance: no folds, the units' alone),
    combined by Welch-Satterthwaite."""
    n = n_datasets * seeds
    if n < 2 or math.isnan(unit_variance):
        return math.nan
    units = (unit_variance / n, float(n - 1))
    var_t, df_t = test_part
    return _half_width(with_test_draw(units, (var_t / test_scale, df_t)), level)


def floor_of_test_draw(test_part: tuple[float, float], test_scale: float = 1.0, level: float = 0.95) -> float:
    """The half-width infinitely many seeds tend to: the test draw's alone (t at its own df). Not a strict lower
    bound at finite seeds: the Welch-Satterthwaite df of the two parts can exceed the test draw's own, so a
    finite count can print an interval a little narrower (never below z · its standard error)."""
    var_t, df_t = test_part
    return 0.0 if math.isnan(var_t) else _half_width((var_t / test_scale, df_t), level)


def seeds_for_half_width(target: float, unit_variance: float, n_datasets: int, test_part: tuple[float, float],
                         test_scale: float = 1.0, level: float = 0.95, max_seeds: int = 1000) -> int | None:
    """The fewest seeds per dataset whose projected half-width is at most ``target``; None when no count up to
    ``max_seeds`` gets there (near or below the test draw's floor: more seeds cannot help, only more test images)."""
    if math.isnan(unit_variance):
        return None
    for seeds in range(1, max_seeds + 1):
        h = projected_half_width(unit_variance, n_datasets, seeds, test_part, test_scale, level)
        if not math.isnan(h) and h <= target:
            return seeds
    return None


def paired_errors(rows: pd.DataFrame, a: str, b: str, metric: str, dataset: str = "Average",
                  average_excludes: Sequence[str] = ()) -> dict:
    """The ingredients of the paired check b - a: mean difference, the per-unit variance (ddof 1), the number
    of datasets and of seeds per dataset, and the test draw's (variance, df), exactly as the tables take them."""
    scores, folds = check_inputs(rows, metric)
    u, d, (var_mean, _), test = paired_parts(scores, folds, a, b, metric, dataset, average_excludes)
    n_datasets = int(u.index.get_level_values(0).nunique()) if len(u) else 0
    return {"mean_difference": float(d.mean()) if len(d) else math.nan,
            "unit_variance": var_mean * len(d) if len(d) > 1 else math.nan,
            "n_units": int(len(d)), "n_datasets": n_datasets,
            "n_seeds": len(d) / n_datasets if n_datasets else math.nan, "test_part": test}


def resolution_plan(rows: pd.DataFrame, pairs: Sequence[tuple[str, str]], metrics: Sequence[str],
                    target: float = 1.0, test_scales: Sequence[float] = (1.0, 4.0), dataset: str = "Average",
                    average_excludes: Sequence[str] = (), level: float = 0.95) -> pd.DataFrame:
    """Per pair (a, b), metric and test scale: today's half-width, the seeds per dataset a ``target`` half-width
    would need (None: unreachable by seeds at that test size) and the test draw's floor (PLAN_COLUMNS)."""
    out = []
    for a, b in pairs:
        for metric in metrics:
            e = paired_errors(rows, a, b, metric, dataset, average_excludes)
            if e["n_units"] < 2:
                continue
            # the tables' own half-width (paired_difference)
            now = _half_width(with_test_draw((e["unit_variance"] / e["n_units"], e["n_units"] - 1.0), e["test_part"]),
                              level)
            for scale in test_scales:
                out.append({"pair": f"{b} − {a}", "metric": metric, "mean_difference": e["mean_difference"],
                            "n_datasets": e["n_datasets"], "n_seeds": e["n_seeds"], "half_width": now,
                            "target": target, "test_scale": scale,
                            "seeds_needed": seeds_for_half_width(target, e["unit_variance"], e["n_datasets"],
                                                                 e["test_part"], scale, level),
                            "floor": floor_of_test_draw(e["test_part"], scale, level)})
    return pd.DataFrame(out, columns=PLAN_COLUMNS)


__all__ = ["PLAN_COLUMNS", "paired_errors", "projected_half_width", "resolution_plan", "seeds_for_half_width",
           "floor_of_test_draw"]
