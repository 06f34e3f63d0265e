"""Internal-consistency audit of the numbers printed in the GRAM paper.

Before we compare our reproduction with the paper we want to know which of the paper's own
numbers are derivable from others (H from base/new, averages from per-dataset columns) and
whether they agree, so that a gap we later see is not blamed on our code when it is a typo or a
different averaging convention in the paper.

Every check yields one row ``table,dataset,method,check,printed,recomputed,abs_diff,consistent``;
:func:`audit_paper_tables` returns all of them and :func:`inconsistencies` keeps the failures.

Tolerances (all printed numbers carry two decimals, i.e. a rounding error of at most 0.005):

* ``H_TOL = 0.011``: the printed H is rounded (<= 0.005) and so are the base/new it is recomputed
  from; H = 2BN/(B+N) has dH/dB + dH/dN = 2(B^2+N^2)/(B+N)^2, which is 1 for B = N and stays
  below 1.04 for every pair in the paper, so input rounding moves H by <= ~0.0052. Total
  <= ~0.0102, plus float margin.
* ``AVG_TOL = 0.006 + 0.005 = 0.011``: 0.006 covers rounding of the printed average (0.005) plus
  float margin; the extra 0.005 is the worst case of the mean of the component rounding errors
  (each component is itself rounded by <= 0.005, so their mean is off by <= 0.005).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "AUDIT_COLUMNS",
    "AVG_TOL",
    "H_TOL",
    "audit_paper_tables",
    "harmonic_mean",
    "inconsistencies",
]

H_TOL = 0.011
AVG_TOL = 0.006 + 0.005
AUDIT_COLUMNS: tuple[str, ...] = (
    "table",
    "dataset",
    "method",
    "check",
    "printed",
    "recomputed",
    "abs_diff",
    "consistent",
)

AVERAGE = "Average"
SOURCE = "ImageNet"  # the source dataset of Tables 2-5; excluded from their target averages
H_TABLES = (1, 6, 7)
DOMAIN_TABLES = (2, 4)  # cross-domain: 4 ImageNet variants as targets
DATASET_TABLES = (3, 5)  # cross-dataset: 10 other datasets as targets
N_TARGETS = {2: 4, 4: 4, 3: 10, 5: 10}
N_T1_DATASETS = 11

Record = dict[str, object]


def harmonic_mean(base, new):
    """H = 2BN/(B+N), the paper's base/new trade-off score.

    0 when both are 0 (not a ZeroDivision), NaN when either is NaN; works on scalars and arrays
    (a scalar in, a float out).
    """
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(b + n == 0, 0.0, 2.0 * b * n / (b + n))
    return float(h) if h.ndim == 0 else h


def _record(
    table: int, dataset: str, method: str, check: str, printed: float, recomputed: float, tol: float
) -> Record:
    """One audit row; ``consistent`` is decided here so every check uses the same rule."""
    diff = abs(float(printed) - float(recomputed))
    return {
        "table": int(table),
        "dataset": dataset,
        "method": method,
        "check": check,
        "printed": float(printed),
        "recomputed": round(float(recomputed), 4),
        "abs_diff": round(diff, 4),
        "consistent": bool(diff <= tol),
    }


def _wide(df: pd.DataFrame, table: int, index: Sequence[str], columns: str) -> pd.DataFrame:
    """Pivot one table to wide form, keeping paper order (pivot_table would sort alphabetically)."""
    sub = df[df["table"] == table]
    wide = sub.pivot(index=list(index), columns=columns, values="value")
    rows = sub[list(index)].drop_duplicates()
    order = pd.MultiIndex.from_frame(rows) if len(index) > 1 else pd.Index(rows[index[0]])
    return wide.reindex(index=order, columns=pd.unique(sub[columns]))


def check_h(df: pd.DataFrame, table: int) -> list[Record]:
    """(a) Every printed H against 2BN/(B+N) of the printed base and new of the same row."""
    wide = _wide(df, table, ["dataset", "method"], "metric")
    return [
        _record(table, ds, m, "H_from_base_new", r["H"], harmonic_mean(r["base"], r["new"]), H_TOL)
        for (ds, m), r in wide.iterrows()
    ]


def check_table1_average(df: pd.DataFrame) -> list[Record]:
    """(b) Table 1 panel (a) against the 11 per-dataset panels.

    base/new should be plain means of the panels; the Average H is checked as H of those means
    (the CoCoOp convention), not as the mean of per-dataset H, which is a different quantity.
    """
    wide = _wide(df, 1, ["dataset", "method"], "metric")
    per_ds = wide.drop(index=AVERAGE, level="dataset")
    n = per_ds.index.get_level_values("dataset").nunique()
    if n != N_T1_DATASETS:
        raise ValueError(f"Table 1 should have {N_T1_DATASETS} per-dataset panels, found {n}")
    means = per_ds.groupby(level="method", sort=False).mean()
    out: list[Record] = []
    for method, printed in wide.xs(AVERAGE, level="dataset").iterrows():
        mean = means.loc[method]
        for metric in ("base", "new"):
            check = f"{metric}_mean_of_11_datasets"
            out.append(_record(1, AVERAGE, method, check, printed[metric], mean[metric], AVG_TOL))
        h = harmonic_mean(mean["base"], mean["new"])
        out.append(_record(1, AVERAGE, method, "H_of_11_dataset_means", printed["H"], h, H_TOL))
    return out


def check_target_average(df: pd.DataFrame, table: int) -> list[Record]:
    """(c)/(d) The printed Average of Tables 2-5 against the mean of the target columns.

    The paper's Average is over targets only: ImageNet is the source and is excluded.
    """
    wide = _wide(df, table, ["method"], "dataset")
    targets = [c for c in wide.columns if c not in (SOURCE, AVERAGE)]
    if len(targets) != N_TARGETS[table]:
        raise ValueError(f"Table {table} should have {N_TARGETS[table]} targets, found {targets}")
    check = f"mean_of_{len(targets)}_targets"
    return [
        _record(table, AVERAGE, m, check, r[AVERAGE], r[targets].mean(), AVG_TOL)
        for m, r in wide.iterrows()
    ]


def _all_checks(df: pd.DataFrame) -> Iterable[Record]:
    """All checks in paper order (table by table)."""
    for table in sorted(set(df["table"])):
        if table in H_TABLES:
            yield from check_h(df, table)
        if table == 1:
            yield from check_table1_average(df)
        if table in DOMAIN_TABLES + DATASET_TABLES:
            yield from check_target_average(df, table)


def audit_paper_tables(df: pd.DataFrame) -> pd.DataFrame:
    """Every consistency check of the long-form paper tables, with a boolean ``consistent``.

    All checks are returned (not just failures) so a notebook can show both the passing bulk and
    the outliers; use :func:`inconsistencies` for the failures only.
    """
    return pd.DataFrame.from_records(list(_all_checks(df)), columns=list(AUDIT_COLUMNS))


def inconsistencies(audit: pd.DataFrame) -> pd.DataFrame:
    """The failing rows of an audit, i.e. printed numbers that rounding alone cannot explain."""
    return audit[~audit["consistent"]].reset_index(drop=True)
