"""Projected interval widths of the paired checks, against Welch-Satterthwaite and t quantiles written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gramlib.reporting.resolution import (PLAN_COLUMNS, paired_errors, projected_half_width, resolution_plan,
                                          seeds_for_half_width, floor_of_test_draw)


def _rows(folds: dict[tuple[str, str, int], list[float]]) -> pd.DataFrame:
    """Base-to-new rows whose base and new accuracies both have the given fold scores, per (dataset, method, seed)."""
    return pd.DataFrame([{"protocol": "base2new", "dataset": d, "method": m, "seed": s, "shots": 16, "epoch": 10,
                          "split": split, "accuracy": float(np.mean(f)), **{f"acc_fold{k}": v for k, v in enumerate(f)}}
                         for (d, m, s), f in folds.items() for split in ("base", "new")])


# one dataset, two seeds: per unit CoOp+GRAM - CoOp = 3, 4 (s^2 = 0.5); per fold, averaged over the seeds, the
# difference is 4, 3.5, 3.5, 3.5, 3 (variance 0.125, / 5 folds = 0.025, 4 df)
ONE = _rows({("d1", "CoOp", 1): [50, 55, 60, 65, 70], ("d1", "CoOp", 2): [52, 57, 62, 67, 72],
             ("d1", "CoOp+GRAM", 1): [55, 58, 63, 68, 71], ("d1", "CoOp+GRAM", 2): [55, 61, 66, 71, 77]})


def _by_hand(s2: float, n_units: int, var_t: float, df_t: float) -> float:
    v_u, df_u = s2 / n_units, n_units - 1
    total = v_u + var_t
    df = total ** 2 / (v_u ** 2 / df_u + var_t ** 2 / df_t)
    return stats.t.ppf(0.975, df) * math.sqrt(total)


def test_errors_are_the_tables_ingredients():
    e = paired_errors(ONE, "CoOp", "CoOp+GRAM", "new")
    assert e["mean_difference"] == pytest.approx(3.5)
    assert e["unit_variance"] == pytest.approx(0.5)
    assert (e["n_units"], e["n_datasets"], e["n_seeds"]) == (2, 1, 2)
    assert e["test_part"] == pytest.approx((0.025, 4.0))


def test_projection_by_hand():
    test = (0.025, 4.0)
    # today's size is the check's own half-width (tests/test_stats.py: t at df 0.275^2 / (0.25^2 + 0.025^2 / 4))
    assert projected_half_width(0.5, 1, 2, test) == pytest.approx(_by_hand(0.5, 2, 0.025, 4.0))
    # eight seeds: units 0.5 / 8 with 7 df; four times the test images: the test draw's variance / 4, same df
    assert projected_half_width(0.5, 1, 8, test) == pytest.approx(_by_hand(0.5, 8, 0.025, 4.0))
    assert projected_half_width(0.5, 1, 8, test, test_scale=4.0) == pytest.approx(_by_hand(0.5, 8, 0.00625, 4.0))
    # three datasets of two seeds: six units
    assert projected_half_width(0.5, 3, 2, test) == pytest.approx(_by_hand(0.5, 6, 0.025, 4.0))
    # no folds (NaN test draw): the units' interval alone
    assert projected_half_width(0.5, 1, 8, (math.nan, math.nan)) == pytest.approx(stats.t.ppf(0.975, 7) * math.sqrt(0.5 / 8))
    # one unit: no interval
    assert math.isnan(projected_half_width(0.5, 1, 1, test))


def test_the_test_draw_is_the_limit_of_many_seeds():
    test = (0.025, 4.0)
    floor = stats.t.ppf(0.975, 4) * math.sqrt(0.025)
    assert floor_of_test_draw(test) == pytest.approx(floor)
    assert floor_of_test_draw(test, 4.0) == pytest.approx(stats.t.ppf(0.975, 4) * math.sqrt(0.025 / 4))
    assert floor_of_test_draw((math.nan, math.nan)) == 0.0
    assert projected_half_width(0.5, 1, 10 ** 7, test) == pytest.approx(floor, rel=1e-3)
    # never below z times the test draw's standard error (the df of a sum is at most the sum of the dfs), so a
    # target of 0.7 x the floor (below 1.96 / 2.776 = 0.706) takes more test images, whatever the seeds
    assert all(projected_half_width(0.5, 1, s, test) > stats.norm.ppf(0.975) * math.sqrt(0.025) for s in (2, 10, 100, 10_000))
    assert seeds_for_half_width(0.7 * floor, 0.5, 1, test) is None
    assert seeds_for_half_width(0.7 * floor, 0.5, 1, test, test_scale=4.0) is not None


def test_seeds_needed_is_the_first_seed_count_that_reaches_the_target():
    test = (0.025, 4.0)
    target = 0.6
    widths = {s: _by_hand(0.5, s, 0.025, 4.0) for s in range(2, 200)}
    first = min(s for s, h in widths.items() if h <= target)
    assert seeds_for_half_width(target, 0.5, 1, test) == first
    assert widths[first - 1] > target
    # today's two seeds already reach a wide target
    assert seeds_for_half_width(2.0 * widths[2], 0.5, 1, test) == 2


def test_plan_matches_the_direction_check_and_its_own_projection():
    from gramlib.reporting.tables import base_to_new_table, direction_check

    rng = np.random.default_rng(0)
    folds = {}
    for d in ("d1", "d2", "d3"):
        for s in (1, 2, 3):
            base = rng.uniform(40, 70, size=5)
            folds[(d, "CoOp", s)] = list(base)
            folds[(d, "CoOp+GRAM", s)] = list(base + rng.normal(1.0, 2.0, size=5))
    rows = _rows(folds)
    plan = resolution_plan(rows, (("CoOp", "CoOp+GRAM"),), ["new"], target=1.0, test_scales=(1.0, 4.0))
    assert list(plan.columns) == PLAN_COLUMNS and len(plan) == 2
    check = direction_check(base_to_new_table(rows), 1, ["new"], rows=rows).set_index("pair").loc["CoOp+GRAM − CoOp"]
    assert plan["half_width"].iloc[0] == pytest.approx((check["ci_high"] - check["ci_low"]) / 2)
    e = paired_errors(rows, "CoOp", "CoOp+GRAM", "new")
    assert (e["n_datasets"], e["n_seeds"]) == (3, 3)
    for _, r in plan.iterrows():
        n = r["seeds_needed"]
        if n is None or (isinstance(n, float) and math.isnan(n)):
            assert r["floor"] > 0.7  # none up to 1000 seeds: the test draw's limit is near the target or above it
        else:
            assert projected_half_width(e["unit_variance"], 3, int(n), e["test_part"], r["test_scale"]) <= 1.0
            assert n == 1 or projected_half_width(e["unit_variance"], 3, int(n) - 1, e["test_part"], r["test_scale"]) > 1.0
