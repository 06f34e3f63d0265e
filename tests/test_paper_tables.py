"""The transcribed paper tables are complete, well-formed and match spot checks typed from the text;
the audit recomputes what it should and catches a planted inconsistency."""

from __future__ import annotations

import pandas as pd
import pytest

from gramlib.reference import COLUMNS, load_paper_tables, paper_table
from gramlib.reference.audit import (
    AUDIT_COLUMNS,
    audit_paper_tables,
    harmonic_mean,
    inconsistencies,
)

KEY = ["table", "dataset", "method", "metric"]
EXPECTED_ROWS_PER_TABLE = {1: 252, 2: 42, 3: 72, 4: 42, 5: 72, 6: 18, 7: 12}


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return load_paper_tables()


def _value(df: pd.DataFrame, table: int, dataset: str, method: str, metric: str) -> float:
    hit = df[(df.table == table) & (df.dataset == dataset) & (df.method == method) & (df.metric == metric)]
    assert len(hit) == 1, (table, dataset, method, metric)
    return float(hit["value"].iloc[0])


def test_shape_and_columns(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 510
    assert df.groupby("table").size().to_dict() == EXPECTED_ROWS_PER_TABLE
    assert df["value"].notna().all()
    assert df["value"].between(0, 100).all()


def test_no_duplicate_keys(df: pd.DataFrame) -> None:
    assert not df.duplicated(KEY).any()


def test_vocabulary(df: pd.DataFrame) -> None:
    metrics = df.groupby("table")["metric"].unique().map(set).to_dict()
    for t in (1, 6, 7):
        assert metrics[t] == {"base", "new", "H"}
    for t in (2, 3):
        assert metrics[t] == {"acc_16shot"}
    for t in (4, 5):
        assert metrics[t] == {"acc_4shot"}
    main = {"CLIP", "CoCoOp", "CoOp", "CoOp+GRAM", "VPT", "VPT+GRAM", "UNIGRAM"}
    assert set(paper_table(1).method) == main
    assert set(paper_table(3).method) == main - {"CLIP"}
    assert list(pd.unique(paper_table(2).dataset)) == [
        "ImageNet", "ImageNetV2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R", "Average",
    ]
    assert "Aircraft" in set(paper_table(5).dataset)
    assert "FGVCAircraft" in set(paper_table(1).dataset)
    assert set(paper_table(6).dataset) == set(paper_table(7).dataset) == {"Average"}
    assert "joint textual&visual prompt tuning" in set(paper_table(6).method)
    assert not df["method"].str.contains("<b>|&amp;").any()


def test_paper_order(df: pd.DataFrame) -> None:
    assert df["table"].is_monotonic_increasing
    assert list(pd.unique(paper_table(1).dataset))[:2] == ["Average", "ImageNet"]
    assert list(pd.unique(paper_table(7).method)) == [f"UNIGRAM ({n} tokens)" for n in (2, 4, 6, 8)]


# Spot checks typed by hand from the paper text, not from the CSV.
@pytest.mark.parametrize(
    ("table", "dataset", "method", "metric", "expected"),
    [
        (1, "Average", "CLIP", "base", 69.34),
        (1, "Average", "UNIGRAM", "H", 78.07),
        (1, "FGVCAircraft", "CoCoOp", "new", 23.71),
        (1, "EuroSAT", "VPT+GRAM", "base", 77.26),
        (1, "UCF101", "CoOp+GRAM", "H", 78.82),
        (2, "ImageNet-R", "UNIGRAM", "acc_16shot", 77.34),
        (3, "EuroSAT", "CoOp+GRAM", "acc_16shot", 51.15),
        (4, "ImageNet-Sketch", "UNIGRAM", "acc_4shot", 48.29),
        (5, "EuroSAT", "UNIGRAM", "acc_4shot", 46.61),
        (5, "Aircraft", "CoOp", "acc_4shot", 18.47),
        (6, "Average", "-meta-learning = prompt pre-training", "new", 74.32),
        (6, "Average", "joint textual&visual prompt tuning", "H", 75.06),
        (7, "Average", "UNIGRAM (8 tokens)", "new", 74.79),
    ],
)
def test_spot_checks(
    df: pd.DataFrame, table: int, dataset: str, method: str, metric: str, expected: float
) -> None:
    assert _value(df, table, dataset, method, metric) == pytest.approx(expected, abs=1e-9)


def test_paper_table_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        paper_table(8)


def test_harmonic_mean_by_hand() -> None:
    # 2 * 80 * 60 / 140 = 9600 / 140 = 68.571428...
    assert harmonic_mean(80.0, 60.0) == pytest.approx(68.5714286, abs=1e-6)
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
    # Table 1 (a) CLIP: H(69.34, 74.22) prints as 71.70.
    assert round(harmonic_mean(69.34, 74.22), 2) == 71.70


def test_audit_columns_and_coverage(df: pd.DataFrame) -> None:
    audit = audit_paper_tables(df)
    assert tuple(audit.columns) == AUDIT_COLUMNS
    assert audit["consistent"].dtype == bool
    counts = audit["check"].value_counts().to_dict()
    assert counts["H_from_base_new"] == 84 + 6 + 4  # every H row of Tables 1, 6, 7
    assert counts["base_mean_of_11_datasets"] == counts["new_mean_of_11_datasets"] == 7
    assert counts["H_of_11_dataset_means"] == 7
    assert counts["mean_of_4_targets"] == 14  # Tables 2 and 4
    assert counts["mean_of_10_targets"] == 12  # Tables 3 and 5
    assert (audit["abs_diff"] - (audit["printed"] - audit["recomputed"]).abs()).abs().max() < 1e-3


def test_audit_findings_on_paper(df: pd.DataFrame) -> None:
    """The paper's only inconsistency: Table 1 DTD UNIGRAM prints H 67.56, H(73.62, 62.38) = 67.54."""
    bad = inconsistencies(audit_paper_tables(df))
    assert list(zip(bad.table, bad.dataset, bad.method, bad.check)) == [
        (1, "DTD", "UNIGRAM", "H_from_base_new")
    ]
    assert bad["recomputed"].iloc[0] == pytest.approx(67.5355, abs=1e-4)


def test_audit_flags_injected_inconsistency(df: pd.DataFrame) -> None:
    modified = df.copy()
    hit = (modified.table == 3) & (modified.dataset == "DTD") & (modified.method == "VPT")
    modified.loc[hit, "value"] += 1.0  # shifts the 10-target mean by 0.1
    hit_h = (
        (modified.table == 6)
        & (modified.method == "-gradient regulating")
        & (modified.metric == "H")
    )
    modified.loc[hit_h, "value"] = 77.31
    bad = inconsistencies(audit_paper_tables(modified))
    found = set(zip(bad.table, bad.dataset, bad.method, bad.check))
    assert (3, "Average", "VPT", "mean_of_10_targets") in found
    assert (6, "Average", "-gradient regulating", "H_from_base_new") in found
    assert len(df) == 510 and _value(df, 3, "DTD", "VPT", "acc_16shot") == 45.02  # original untouched
