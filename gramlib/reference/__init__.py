"""The numbers the GRAM paper reports (Tables 1-7), as data.

Our own results are only meaningful next to the paper's, so every reported number lives in one
tidy CSV (``paper_tables.csv``: ``table,dataset,method,metric,value``, rows in paper order) that
ships as package data; notebooks and reports read it through these helpers instead of retyping.

Conventions (names exactly as printed in the paper):

* ``metric`` is ``base``/``new``/``H`` for Tables 1, 6, 7, ``acc_16shot`` for Tables 2-3 and
  ``acc_4shot`` for Tables 4-5.
* The ``+ GRAM`` rows are named after the baseline above them: ``CoOp+GRAM``, ``VPT+GRAM``.
* Table 1 panel (a) "Average over 11 datasets" is dataset ``Average``; Tables 3/5 keep the
  printed column name ``Aircraft`` (Table 1 prints ``FGVCAircraft``).
* Tables 6 and 7 report averages over 11 datasets, so their dataset is ``Average``; Table 7
  methods are ``UNIGRAM (N tokens)``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["CSV_NAME", "COLUMNS", "load_paper_tables", "paper_table"]

CSV_NAME = "paper_tables.csv"
COLUMNS: tuple[str, ...] = ("table", "dataset", "method", "metric", "value")


def load_paper_tables() -> pd.DataFrame:
    """All 510 reported numbers, read via importlib.resources so it works from a wheel too."""
    source = resources.files(__name__).joinpath(CSV_NAME)
    with source.open("r", encoding="utf-8") as fh:
        df = pd.read_csv(
            fh,
            dtype={"table": "int64", "dataset": str, "method": str, "metric": str, "value": "float64"},
            keep_default_na=False,
        )
    return df[list(COLUMNS)]


def paper_table(n: int) -> pd.DataFrame:
    """The rows of Table ``n`` (1..7) in paper order; raises on a table the paper does not have."""
    df = load_paper_tables()
    if n not in set(df["table"]):
        raise ValueError(f"the paper has Tables 1-7, not {n!r}")
    return df[df["table"] == n].reset_index(drop=True)
