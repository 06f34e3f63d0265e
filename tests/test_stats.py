"""Intervals, paired tests and verdicts, against computations written out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from gramlib.stats import AGREES, NO_PAPER, OPPOSITE, UNRESOLVED, mean_interval, paired_interval, paired_permutation_p, verdict


def test_t_interval_by_hand():
    x = [70.0, 72.0, 77.0]
    m = sum(x) / 3
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert mean_interval(x) == pytest.approx((m, m - half, m + half))
    assert paired_interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx((2.0 - 4.302652729911275 * 1.0 / math.sqrt(3),
                                                                               2.0 + 4.302652729911275 * 1.0 / math.sqrt(3)))
    assert all(math.isnan(v) for v in paired_interval([1.0], [2.0]))


def test_sign_flip_p_value_equals_full_enumeration():
    rng = np.random.default_rng(3)
    a = rng.normal(size=8)
    b = a + rng.normal(0.4, 1.0, size=8)
    d = b - a
    observed = abs(d.mean())
    flips = [abs(np.mean(d * np.array(s))) for s in itertools.product([1, -1], repeat=8)]
    exact = np.mean([f >= observed - 1e-12 for f in flips])
    assert paired_permutation_p(a, b) == pytest.approx(exact)
    assert paired_permutation_p(a, a) == 1.0


def test_verdicts():
    assert verdict(0.2, 1.0, 1.8) == AGREES
    assert verdict(-1.0, -0.2, 1.8) == OPPOSITE
    assert verdict(-0.2, 1.0, 1.8) == UNRESOLVED
    assert verdict(0.2, 1.0, None) == NO_PAPER and verdict(0.2, 1.0, float("nan")) == NO_PAPER
    assert verdict(float("nan"), float("nan"), 1.0) == UNRESOLVED
    # the interval alone excludes 0, but with 3 units the permutation test cannot (p >= 2/8): not resolved
    assert verdict(0.08, 0.34, 0.17, p=0.25) == UNRESOLVED and verdict(0.08, 0.34, 0.17, p=0.01) == AGREES


def test_table_intervals_and_direction_check_with_unit_rows():
    from gramlib.reporting.tables import base_to_new_table, describe_check, direction_check

    rows = []
    gains = {("d1", 1): 2.0, ("d1", 2): 3.0, ("d1", 3): 1.0, ("d2", 1): 2.5, ("d2", 2): 1.5, ("d2", 3): 2.0}
    for (ds, seed), gain in gains.items():
        for method, extra in (("CoOp", 0.0), ("CoOp+GRAM", gain)):
            for split, acc in (("base", 80.0 + seed), ("new", 60.0 + seed + extra)):
                rows.append({"protocol": "base2new", "dataset": ds, "method": method, "seed": seed, "shots": 16,
                             "epoch": 10, "split": split, "accuracy": acc})
    rows = pd.DataFrame(rows)
    table = base_to_new_table(rows)
    r = table[(table["dataset"] == "d1") & (table["method"] == "CoOp") & (table["metric"] == "base")].iloc[0]
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # base accuracies 81, 82, 83: std 1
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((82.0 - half, 82.0 + half))

    check = direction_check(table, 1, ["new"], rows=rows).set_index("pair")
    c = check.loc["CoOp+GRAM − CoOp"]
    d = np.array(list(gains.values()))
    h = 2.570581835636314 * d.std(ddof=1) / math.sqrt(6)  # t_{0.975, 5}
    assert c["n_units"] == 6 and (c["ci_low"], c["ci_high"]) == pytest.approx((d.mean() - h, d.mean() + h))
    assert c["verdict"] == AGREES  # the paper's Table 1: CoOp+GRAM gains on new classes
    assert c["p_value"] == pytest.approx(2 / 64)  # all six differences positive: only the two all-same-sign flips
    assert "agree with the paper" in describe_check(check.reset_index())
    no_rows = direction_check(table, 1, ["new"])
    assert no_rows.iloc[0]["verdict"].startswith("sign only") and "not a test" in describe_check(no_rows)


def test_shared_labels_by_hand():
    from gramlib.reporting.tables import shared_labels, shared_labels_markdown

    got = shared_labels(["letter a", "Hash_Sign", "tree"], {"t1": ["hash sign", "mug"], "t2": ["kite", "letter  A"],
                                                          "t3": ["umbrella"]})
    assert got == {"t1": ["hash sign"], "t2": ["letter  A"], "t3": []}
    assert "`t1`: 1 (hash sign)" in shared_labels_markdown(got, "src") and "t3" not in shared_labels_markdown(got, "src")
    assert shared_labels_markdown({"t3": []}, "src").startswith("No target shares a class name with the source `src`")
