"""Tables are views of tidy result rows: aggregation over seeds, the paper's layouts, and Markdown.

Result rows (accuracy in percent; one per protocol, dataset, method, seed, shots, epoch, split) are produced by
``gramlib.experiments.protocols``; nothing here parses logs. A table row is ``dataset, method, metric, mean,
std, n_seeds``; ``metric`` follows ``gramlib/reference/paper_tables.csv`` (``base``/``new``/``H``
for base-to-new tables, ``acc_16shot``/``acc_4shot`` for the transfer tables); ``ci_low``/``ci_high`` bound
the mean with a 95 % Student-t interval (:func:`with_intervals`) that counts two independent errors: the draw
of the few-shot training images (the spread over its ``n_seeds``, ``se_seeds``) and the draw of the test
images (the spread over class-stratified folds of the test set, ``se_test_draw``, :mod:`gramlib.test_draw`),
with ``df`` the Welch-Satterthwaite degrees of freedom of their sum. Every seed is scored on the same test
images, so the seeds' spread alone cannot see the second, which at 50 test images per class is the larger
for most numbers of the mini world. Paired comparisons (:func:`direction_check`) count both alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from gramlib.reference.audit import harmonic_mean
from gramlib.test_draw import (FOLD_COLUMNS, TEST_FOLDS, average_fold_variance, fold_variance, mean_variance, t_interval,
                                with_test_draw)

TABLE_COLUMNS = ["dataset", "method", "metric", "mean", "std", "n_seeds", "ci_low", "ci_high", "se_seeds",
                 "se_test_draw", "df"]
NAN_PART = (float("nan"), float("nan"))


def final_epoch(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's last evaluated epoch (per-epoch rows feed the Figure 1b/3a curves)."""
    key = ["protocol", "dataset", "method", "seed", "shots", "split"]
    last = rows.groupby(key)["epoch"].transform("max")
    return rows[rows["epoch"] == last]


def with_intervals(table: pd.DataFrame, level: float = 0.95,
                   test_draw: dict[tuple[str, str, str], tuple[float, float]] | None = None) -> pd.DataFrame:
    """``ci_low``/``ci_high``: mean ± t_df · sqrt(se_seeds² + se_test_draw²); NaN with one seed.

    ``se_seeds`` = std/√n over the row's seeds (for H: the std of per-seed H, as the table's std), n - 1 df;
    ``test_draw`` maps (dataset, method, metric) to the test-draw (variance, df) of the row's mean (from the
    folds, :func:`b2n_test_draw`); a row without one (a table of rows without folds, or a split with too few
    test images per class) has ``se_test_draw`` NaN and the seeds' interval alone. ``df``: Welch-Satterthwaite."""
    out = table.copy()
    test_draw = test_draw or {}
    cols = {"ci_low": [], "ci_high": [], "se_seeds": [], "se_test_draw": [], "df": []}
    for r in out.itertuples():
        n = int(r.n_seeds) if pd.notna(r.n_seeds) else 0
        seeds = (float(r.std) ** 2 / n, float(n - 1)) if n > 1 and pd.notna(r.std) else NAN_PART
        test = test_draw.get((r.dataset, r.method, r.metric), NAN_PART)
        var, df = with_test_draw(seeds, test)
        lo, hi = t_interval(float(r.mean), var, df, level)
        for k, v in zip(cols, (lo, hi, np.sqrt(seeds[0]), np.sqrt(test[0]), df)):
            cols[k].append(v)
    for k, v in cols.items():
        out[k] = pd.Series(v, index=out.index, dtype=float)
    return out


def fold_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, dataset, seed, fold) of final-epoch rows: each split's accuracy on that fold of its test
    images (:mod:`gramlib.test_draw`), one column per split, and H where base and new are both there.
    Empty when the rows carry no fold columns (results written before they existed)."""
    if rows.empty or not set(FOLD_COLUMNS) <= set(rows.columns):
        return pd.DataFrame(columns=["method", "dataset", "seed", "fold"])
    rows = final_epoch(rows)
    long = rows[["method", "dataset", "seed", "split", *FOLD_COLUMNS]].melt(
        id_vars=["method", "dataset", "seed", "split"], var_name="fold", value_name="fold_accuracy")
    long["fold"] = long["fold"].map({c: k for k, c in enumerate(FOLD_COLUMNS)})
    # groupby, not pivot_table(dropna=False): that would add every (method, dataset) pair, run or not, as NaN rows
    wide = long.groupby(["method", "dataset", "seed", "fold", "split"], sort=False)["fold_accuracy"].mean()
    wide = wide.unstack("split").reset_index()
    wide.columns.name = None
    if {"base", "new"} <= set(wide.columns):
        wide["H"] = harmonic_mean(wide["base"], wide["new"])
    return wide


def _fold_matrix(folds: pd.DataFrame, value: str) -> pd.DataFrame:
    """Seed-averaged fold scores of ``value``: one row per dataset, one column per fold."""
    m = folds.groupby(["dataset", "fold"], sort=False)[value].mean().unstack("fold")
    return m.reindex(columns=range(TEST_FOLDS))


def dataset_parts(matrix: pd.DataFrame, average_excludes: Sequence[str] = ()) -> tuple[dict[str, tuple[float, float]],
                                                                                    tuple[float, float]]:
    """From a :func:`_fold_matrix` (a row per dataset): each dataset's test-draw (variance, df), and the average's
    over the datasets not in ``average_excludes`` (their parts summed / D², :func:`average_fold_variance`)."""
    kept = matrix.drop(index=list(average_excludes), errors="ignore")
    return ({d: fold_variance(matrix.loc[d]) for d in matrix.index},
            average_fold_variance(kept.to_numpy()) if len(kept) else NAN_PART)


def b2n_test_draw(folds: pd.DataFrame, average_name: str = "Average") -> dict[tuple[str, str, str], tuple[float, float]]:
    """The test-draw (variance, df) of every base-to-new table row's mean, from :func:`fold_scores`.

    Per dataset: the variance over folds of the seed-averaged fold accuracy, / TEST_FOLDS (H: of the fold's H
    of seed-averaged base and new, as the table's H). Average: base and new sum their datasets' parts / D²
    (:func:`gramlib.test_draw.average_fold_variance`); H takes the H of the dataset-averaged folds."""
    out: dict[tuple[str, str, str], tuple[float, float]] = {}
    if folds.empty or not {"base", "new"} <= set(folds.columns):
        return out
    for method, f in folds.groupby("method", sort=False):
        b, n = _fold_matrix(f, "base"), _fold_matrix(f, "new")
        for metric, m in (("base", b), ("new", n)):
            per, avg = dataset_parts(m)
            out.update({(d, method, metric): part for d, part in per.items()})
            out[(average_name, method, metric)] = avg
        for d in b.index:
            out[(d, method, "H")] = fold_variance(harmonic_mean(b.loc[d], n.loc[d]))
        out[(average_name, method, "H")] = fold_variance(harmonic_mean(b.mean(axis=0, skipna=False),
                                                                       n.mean(axis=0, skipna=False)))
    return out


def transfer_test_draw(folds: pd.DataFrame, metric: str, source: str,
                       average_name: str = "Average") -> dict[tuple[str, str, str], tuple[float, float]]:
    """The test-draw (variance, df) of every transfer table row's mean (the ``test`` split's folds); the
    Average's over the targets only, as the table's."""
    out: dict[tuple[str, str, str], tuple[float, float]] = {}
    if folds.empty or "test" not in folds.columns:
        return out
    for method, f in folds.groupby("method", sort=False):
        per, avg = dataset_parts(_fold_matrix(f, "test"), average_excludes=(source,))
        out.update({(d, method, metric): part for d, part in per.items()})
        out[(average_name, method, metric)] = avg
    return out


def _std(x: pd.Series) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")


def base_to_new_table(rows: pd.DataFrame, average_name: str = "Average") -> pd.DataFrame:
    """Per dataset and method: base, new and H (H of the seed-averaged base and new, as the paper).

    The std of H is the std of the per-seed harmonic means. The ``Average`` dataset averages the
    per-dataset means over datasets (then H of those averages), as Table 1(a) does.
    """
    rows = final_epoch(rows[rows["protocol"] == "base2new"])
    test_draw = b2n_test_draw(fold_scores(rows), average_name)
    per_seed = rows.pivot_table(index=["dataset", "method", "seed"], columns="split", values="accuracy").reset_index()
    per_seed = per_seed.dropna(subset=["base", "new"])
    per_seed["H"] = harmonic_mean(per_seed["base"], per_seed["new"])
    out = []
    for (dataset, method), g in per_seed.groupby(["dataset", "method"], sort=False):
        b, n = g["base"].mean(), g["new"].mean()
        for metric, mean, std in (("base", b, _std(g["base"])), ("new", n, _std(g["new"])),
                                  ("H", harmonic_mean(b, n), _std(g["H"]))):
            out.append({"dataset": dataset, "method": method, "metric": metric, "mean": mean,
                        "std": std, "n_seeds": g["seed"].nunique()})
    table = pd.DataFrame(out, columns=TABLE_COLUMNS[:6])
    if table.empty:
        return with_intervals(table, test_draw=test_draw)
    # Average over datasets: per seed, mean over datasets; then the same statistics
    avg_seed = per_seed.groupby(["method", "seed"])[["base", "new"]].mean().reset_index()
    avg_seed["H"] = harmonic_mean(avg_seed["base"], avg_seed["new"])
    for method, g in avg_seed.groupby("method", sort=False):
        b, n = g["base"].mean(), g["new"].mean()
        for metric, mean, std in (("base", b, _std(g["base"])), ("new", n, _std(g["new"])),
                                  ("H", harmonic_mean(b, n), _std(g["H"]))):
            table.loc[len(table)] = [average_name, method, metric, mean, std, g["seed"].nunique()]
    return with_intervals(table, test_draw=test_draw)


def transfer_table(rows: pd.DataFrame, protocol: str, shots: int, source: str,
                   average_name: str = "Average") -> pd.DataFrame:
    """Tables 2-5: accuracy on the source and each target; ``Average`` over the targets only."""
    metric = f"acc_{shots}shot"
    rows = final_epoch(rows[(rows["protocol"] == protocol) & (rows["shots"] == shots)])
    rows = rows[rows["split"] == "test"]
    test_draw = transfer_test_draw(fold_scores(rows), metric, source, average_name)
    out = []
    for (dataset, method), g in rows.groupby(["dataset", "method"], sort=False):
        out.append({"dataset": dataset, "method": method, "metric": metric, "mean": g["accuracy"].mean(),
                    "std": _std(g["accuracy"]), "n_seeds": g["seed"].nunique()})
    table = pd.DataFrame(out, columns=TABLE_COLUMNS[:6])
    targets = rows[rows["dataset"] != source]
    if len(targets):
        per_seed = targets.groupby(["method", "seed"])["accuracy"].mean().reset_index()
        for method, g in per_seed.groupby("method", sort=False):
            table.loc[len(table)] = [average_name, method, metric, g["accuracy"].mean(),
                                     _std(g["accuracy"]), g["seed"].nunique()]
    return with_intervals(table, test_draw=test_draw)


def fmt(mean: float, std: float) -> str:
    return f"{mean:.2f}" if not np.isfinite(std) else f"{mean:.2f} ± {std:.2f}"


def base_to_new_markdown(table: pd.DataFrame, methods: list[str] | None = None) -> str:
    """One block per dataset (Average first), rows = methods, columns Base / New / H (Table 1 layout)."""
    parts = []
    datasets = list(dict.fromkeys(["Average"] + table["dataset"].tolist())) if len(table) else []
    for ds in datasets:
        sub = table[table["dataset"] == ds]
        if sub.empty:
            continue
        order = methods or list(dict.fromkeys(sub["method"]))
        lines = [f"**{ds}**", "", "| method | Base | New | H |", "|---|---|---|---|"]
        for m in order:
            cell = {r.metric: fmt(r.mean, r.std) for r in sub[sub["method"] == m].itertuples()}
            if cell:
                lines.append(f"| {m} | {cell.get('base', '')} | {cell.get('new', '')} | {cell.get('H', '')} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def transfer_markdown(table: pd.DataFrame, source: str, methods: list[str] | None = None) -> str:
    """Rows = methods, columns = source, targets..., Average (Tables 2-5 layout)."""
    if table.empty:
        return "(no rows)\n"
    cols = [source] + [d for d in dict.fromkeys(table["dataset"]) if d not in (source, "Average")] + ["Average"]
    cols = [c for c in cols if c in set(table["dataset"])]
    order = methods or list(dict.fromkeys(table["method"]))
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in order:
        sub = table[table["method"] == m].set_index("dataset")
        lines.append(f"| {m} | " + " | ".join(fmt(sub.loc[c, 'mean'], sub.loc[c, 'std']) if c in sub.index else ""
                                                 for c in cols) + " |")
    return "\n".join(lines) + "\n"


def paper_reference_markdown(table_number: int) -> str:
    """The paper's own table (from ``gramlib/reference/paper_tables.csv``) as Markdown."""
    from gramlib.reference import paper_table

    ref = paper_table(table_number).copy()
    ref["mean"], ref["std"] = ref["value"], float("nan")
    if set(ref["metric"]) <= {"base", "new", "H"}:
        return base_to_new_markdown(ref)
    source = ref["dataset"].iloc[0]
    return transfer_markdown(ref, source)


# ------------------------------------------------------------------------------------------------
# what the notebooks write: reports/tables/table<N>_<slug>.{csv,md,provenance.json}

# ours: b - a in the table (for H, the harmonic means of the averaged base and new); unit_mean: the mean of the
# per-unit differences, around which the interval is drawn (the same as ours for base, new and transfer
# accuracies over balanced units; for H the mean of per-unit H differences, which can differ by a little)
CHECK_COLUMNS = ["pair", "paper_pair", "metric", "ours", "unit_mean", "paper", "same_direction", "ci_low", "ci_high",
                 "p_value", "n_units", "se_units", "se_test_draw", "verdict"]
# the paper's pairs "method -> method + GRAM" whose difference is its claim
GRAM_PAIRS = (("CoOp", "CoOp+GRAM"), ("VPT", "VPT+GRAM"))


def gram_deltas(table: pd.DataFrame, metric: str, dataset: str = "Average",
                pairs: tuple[tuple[str, str], ...] = GRAM_PAIRS) -> pd.DataFrame:
    """``b − a`` of each pair (a, b) present in ``table`` for one metric and dataset."""
    sub = table[(table["dataset"] == dataset) & (table["metric"] == metric)].set_index("method")["mean"]
    out = []
    for a, b in pairs:
        if a in sub.index and b in sub.index:
            out.append({"pair": f"{b} − {a}", "metric": metric, "delta": float(sub[b] - sub[a])})
    return pd.DataFrame(out, columns=["pair", "metric", "delta"])


def unit_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, dataset, seed) of base-to-new rows: base and new accuracy of the final epoch, and
    their H: the paired units of every "method A vs method B" comparison."""
    rows = final_epoch(rows[rows["protocol"] == "base2new"])
    per = rows.pivot_table(index=["method", "dataset", "seed"], columns="split", values="accuracy").reset_index()
    per = per.dropna(subset=["base", "new"])
    per["H"] = harmonic_mean(per["base"], per["new"])
    return per[["method", "dataset", "seed", "base", "new", "H"]]


def transfer_unit_scores(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (method, dataset, seed) of one transfer view's rows: the final epoch's test accuracy as ``metric``."""
    rows = final_epoch(rows[rows["split"] == "test"])
    per = rows.groupby(["method", "dataset", "seed"], sort=False)["accuracy"].mean().rename(metric).reset_index()
    return per


def paired_units(scores: pd.DataFrame, a: str, b: str, metric: str, dataset: str = "Average",
                 average_excludes: Sequence[str] = ()) -> pd.DataFrame:
    """The (dataset, seed) units both ``a`` and ``b`` ran (one dataset's seeds, or for "Average" all
    datasets but ``average_excludes``, e.g. a transfer table's source), with their ``metric`` side by side."""
    s = scores[~scores["dataset"].isin(average_excludes)] if dataset == "Average" else scores[scores["dataset"] == dataset]
    wide = s[s["method"].isin([a, b])].pivot_table(index=["dataset", "seed"], columns="method", values=metric)
    return wide.dropna() if {a, b} <= set(wide.columns) else pd.DataFrame(columns=[a, b])


def paired_test_draw(folds: pd.DataFrame, a: str, b: str, metric: str, units: pd.Index,
                     average: bool = True) -> tuple[float, float]:
    """The test-draw (variance, df) of the mean paired difference b - a over ``units`` ((dataset, seed) pairs).

    Per dataset, the fold-k difference averaged over its seeds is one draw of a test set TEST_FOLDS times
    smaller (both methods see the same fold); its variance over folds / TEST_FOLDS is the dataset's part, and
    the average over datasets sums them / D² (``average``: more than one dataset). NaN without folds."""
    col = metric if metric in ("base", "new", "H") else "test"
    if folds.empty or col not in folds.columns or not len(units):
        return NAN_PART
    keys = pd.MultiIndex.from_frame(folds[["dataset", "seed"]])
    f = folds[keys.isin(units) & folds["method"].isin([a, b])]
    wide = f.pivot_table(index=["dataset", "seed", "fold"], columns="method", values=col, dropna=False)
    if not {a, b} <= set(wide.columns):
        return NAN_PART
    diff = (wide[b] - wide[a]).rename("d").reset_index()
    per = _fold_matrix(diff, "d")
    if len(per) != units.get_level_values(0).nunique():
        return NAN_PART
    return average_fold_variance(per.to_numpy())


def check_inputs(rows: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(unit scores, fold scores) a paired check of ``metric`` reads from result rows: base-to-new units and folds
    for base/new/H, one transfer view's otherwise."""
    if metric in ("base", "new", "H"):
        return unit_scores(rows), fold_scores(rows[rows["protocol"] == "base2new"])
    return transfer_unit_scores(rows, metric), fold_scores(rows)


def paired_parts(scores: pd.DataFrame, folds: pd.DataFrame, a: str, b: str, metric: str, dataset: str = "Average",
                 average_excludes: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.Series, tuple[float, float],
                                                                tuple[float, float]]:
    """The units both ran, their differences b − a, and the two errors of the differences' mean: the units'
    (variance, df) and the test draw's (:func:`paired_test_draw`; NaN without folds or units)."""
    u = paired_units(scores, a, b, metric, dataset, average_excludes)
    d = (u[b] - u[a]) if len(u) else pd.Series(dtype=float)
    test = paired_test_draw(folds, a, b, metric, u.index) if len(u) else NAN_PART
    return u, d, mean_variance(d), test


def paired_difference(scores: pd.DataFrame, folds: pd.DataFrame, a: str, b: str, metric: str,
                      dataset: str = "Average", average_excludes: Sequence[str] = (),
                      level: float = 0.95) -> dict[str, float]:
    """The mean paired difference b − a over the (dataset, seed) units both ran (``unit_mean``), its ``level`` interval
    counting the units' spread (n - 1 df) and the draw of test images (:func:`paired_test_draw`; the units'
    alone where there are no folds), and a sign-flip permutation p-value over the units."""
    from gramlib.stats import paired_permutation_p

    u, d, units_part, test = paired_parts(scores, folds, a, b, metric, dataset, average_excludes)
    if not len(u):
        return {"unit_mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_units": 0,
                "se_units": np.nan, "se_test_draw": np.nan}
    var, df = with_test_draw(units_part, test)
    lo, hi = t_interval(float(d.mean()), var, df, level)
    return {"unit_mean": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": paired_permutation_p(u[a], u[b]),
            "n_units": int(len(u)),
            "se_units": float(np.sqrt(units_part[0])), "se_test_draw": float(np.sqrt(test[0]))}


def direction_check(ours: pd.DataFrame, table_number: int, metrics: list[str], dataset: str = "Average",
                    paper_dataset: str = "Average", pairs: tuple[tuple[str, str], ...] = GRAM_PAIRS,
                    paper_names: dict[str, str] | None = None, rows: pd.DataFrame | None = None,
                    average_excludes: Sequence[str] = (), level: float = 0.95) -> pd.DataFrame:
    """Does each change of method move our numbers the way it moves the paper's, resolvably?

    One row per pair (a, b) and metric: ours = b − a in our table, paper = the same difference in the
    paper's table, where ``paper_names`` maps our method labels to the paper's row names (for rows a
    profile hosts differently, e.g. the mini profile's CoOp-hosted ablations of Table 6). With the
    base-to-new result ``rows``, the difference is also taken per (dataset, seed) unit: its ``level``
    t-interval (``ci_low``, ``ci_high``; :func:`paired_difference`: the units' spread, ``se_units``, and the
    draw of test images, ``se_test_draw``), a sign-flip permutation p-value over the units and the verdict ``agrees`` /
    ``opposite`` / ``not resolved at this size`` (:func:`gramlib.stats.verdict`: the interval must exclude 0
    and the p-value be below 1 - ``level``); without rows the
    verdict is the sign alone and says so. Transfer tables pass one view's rows (metric ``acc_Nshot``)
    and their source in ``average_excludes`` (their average is over the targets).
    """
    from gramlib.reference import paper_table
    from gramlib.stats import verdict

    names = paper_names or {}
    ref = paper_table(table_number).rename(columns={"value": "mean"})
    out = []
    for metric in metrics:
        scores, folds = (None, None) if rows is None else check_inputs(rows, metric)
        mine = gram_deltas(ours, metric, dataset, pairs).set_index("pair")["delta"]
        mapped = tuple((names.get(a, a), names.get(b, b)) for a, b in pairs)
        theirs = gram_deltas(ref, metric, paper_dataset, mapped).set_index("pair")["delta"].to_dict()
        for (a, b), (pa, pb) in zip(pairs, mapped):
            pair = f"{b} − {a}"
            if pair not in mine.index:
                continue
            p = float(theirs.get(f"{pb} − {pa}", np.nan))
            row = {"pair": pair, "paper_pair": f"{pb} − {pa}", "metric": metric, "ours": float(mine[pair]),
                   "unit_mean": np.nan, "paper": p,
                   "same_direction": bool(np.sign(mine[pair]) == np.sign(p)) if np.isfinite(p) else None,
                   "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_units": 0,
                   "se_units": np.nan, "se_test_draw": np.nan, "verdict": "sign only (no unit rows)"}
            if scores is not None:
                diff = paired_difference(scores, folds, a, b, metric, dataset, average_excludes, level)
                row.update(diff, verdict=verdict(diff["ci_low"], diff["ci_high"], p if np.isfinite(p) else None,
                                                 diff["p_value"], level))
            out.append(row)
    return pd.DataFrame(out, columns=CHECK_COLUMNS)


def write_table(table: pd.DataFrame, stem: str, reports_dir: str | Path, markdown: str, stamp: dict) -> dict[str, Path]:
    """Write ``reports/tables/<stem>.csv`` (TABLE_COLUMNS), ``<stem>.md`` (``markdown`` as given) and
    ``<stem>.provenance.json``; every file is written atomically."""
    from gramlib.io import atomic_path
    from gramlib.reporting.provenance import write_csv, write_provenance

    if {"mean", "std", "n_seeds"} <= set(table.columns) and not {"ci_low", "ci_high"} <= set(table.columns):
        table = with_intervals(table)
    missing = set(TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{stem}: missing columns {sorted(missing)}")
    out = Path(reports_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(table[TABLE_COLUMNS], out / f"{stem}.csv")}
    with atomic_path(out / f"{stem}.md") as tmp:
        Path(tmp).write_text(markdown)
    paths["md"] = out / f"{stem}.md"
    paths["provenance"] = write_provenance(out / f"{stem}.provenance.json", **stamp)
    return paths


def save_table(table: pd.DataFrame, number: int, slug: str, reports_dir: str | Path, markdown: str,
               stamp: dict) -> dict[str, Path]:
    """Write ``table<N>_<slug>.csv`` (TABLE_COLUMNS), ``.md`` (ours, then the paper's) and provenance."""
    md = (f"# Table {number} ({slug.replace('_', ' ')}): profile {stamp.get('profile')}\n\n"
          f"Ours (mean ± std over seeds {stamp.get('seeds')}; accuracy %):\n\n{markdown}\n"
          f"The paper's Table {number} (CLIP ViT-B/16, its datasets):\n\n{paper_reference_markdown(number)}")
    return write_table(table, f"table{number}_{slug}", reports_dir, md, stamp)


def describe_check(check: pd.DataFrame) -> str:
    """One sentence per row of :func:`direction_check`, for the notebooks' verdicts."""
    from gramlib.stats import AGREES, OPPOSITE, UNRESOLVED

    if check.empty:
        return "No GRAM pair was run, so there is nothing to compare."
    out = []
    for r in check.itertuples():
        where = f" ({r.where})" if "where" in check.columns else ""
        if np.isfinite(r.ci_low):
            test = (" and the draw of test images" if "se_test_draw" in check.columns and np.isfinite(r.se_test_draw)
                    else "")
            centre = getattr(r, "unit_mean", np.nan)
            around = (f" around the units' mean {centre:+.2f}" if np.isfinite(centre) and abs(centre - r.ours) >= 0.005
                      else "")
            out.append(f"- {r.pair}{where}, {r.metric}: ours {r.ours:+.2f} (95 % CI [{r.ci_low:+.2f}, {r.ci_high:+.2f}]{around} over "
                       f"{r.n_units} dataset×seed units{test}, paired permutation p over the units = {r.p_value:.3g}), "
                       f"paper {r.paper:+.2f} → **{r.verdict}**.")
        else:
            sign = ("same sign as the paper" if r.same_direction else
                    "opposite sign to the paper" if r.same_direction is not None else "no paper number")
            out.append(f"- {r.pair}{where}, {r.metric}: ours {r.ours:+.2f}, paper {r.paper:+.2f} → {sign} (sign only: not a test).")
    v = check["verdict"]
    if v.isin([AGREES, OPPOSITE, UNRESOLVED]).any():
        out.append(f"\n**{int((v == AGREES).sum())} of {len(check)}** effects agree with the paper, "
                   f"{int((v == OPPOSITE).sum())} are opposite, {int((v == UNRESOLVED).sum())} are not resolved at this size.")
    else:
        n_same = int(check["same_direction"].fillna(False).sum())
        out.append(f"\n**{n_same} of {len(check)}** effects have the paper's sign (not a test: no unit rows).")
    return "\n".join(out)


def meta_seed_spread(rows: pd.DataFrame, runs: list[str], reference: str, label: str | None = None) -> pd.DataFrame:
    """One GRAM method meta-trained several times (``runs``: its rows, one per task-sampler seed),
    against ``reference`` (its plain host): TABLE_COLUMNS rows on the ``Average`` dataset, each run's
    seed-averaged base / new / H, then ``label`` (default ``<first run> over meta seeds``): mean and std
    over the runs (n_seeds = number of runs). The std over data seeds of one run understates GRAM's
    uncertainty when the meta-training draw moves the result more than the few-shot draw does."""
    label = label if label is not None else f"{runs[0]} over meta seeds"
    table = base_to_new_table(rows[rows["method"].isin(runs + [reference])])
    avg = table[table["dataset"] == "Average"]
    present = [m for m in [reference] + runs if m in set(avg["method"])]
    out = avg[avg["method"].isin(present)].copy()
    out["order"] = out["method"].map({m: i for i, m in enumerate(present)})
    out = out.sort_values(["order", "metric"], kind="stable").drop(columns="order")
    per = avg[avg["method"].isin(runs)].pivot_table(index="method", columns="metric", values="mean")
    spread = pd.DataFrame([["Average", label, metric, float(per[metric].mean()),
                            _std(per[metric]), len(per)] for metric in ("base", "new", "H") if len(per)],
                          columns=TABLE_COLUMNS[:6])
    # over the meta-training runs, and the test draw of the runs' pooled folds (every run sees the same test images)
    pooled = fold_scores(rows[(rows["protocol"] == "base2new") & rows["method"].isin(runs)].assign(method=label))
    spread = with_intervals(spread, test_draw=b2n_test_draw(pooled))
    return pd.concat([out[TABLE_COLUMNS], spread], ignore_index=True) if len(spread) else out[TABLE_COLUMNS].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# Tables 2-5: prompts tuned on the source, applied unchanged to targets (notebooks/11_transfer_tables.ipynb)


class TransferSpec(NamedTuple):
    """Which rows one transfer table shows and where it goes."""

    experiment: str  # params.yaml suite.experiments entry whose rows it reads (its shots: 16 or 4)
    view: str  # protocol of the rows: cross_domain (the source's shifted variants) | cross_dataset (other datasets)
    slug: str  # output stem: reports/tables/table<number>_<slug>.{csv,md,provenance.json}
    number: int  # the paper's table number (gramlib/reference/paper_tables.csv)
    title: str  # "<view> generalisation", completed with the shot count in the provenance title

    @property
    def stem(self) -> str:
        return f"table{self.number}_{self.slug}"


TRANSFER_TABLES: dict[str, TransferSpec] = {
    "table2": TransferSpec("transfer16", "cross_domain", "cross_domain", 2, "cross-domain generalisation"),
    "table3": TransferSpec("transfer16", "cross_dataset", "cross_dataset", 3, "cross-dataset generalisation"),
    "table4": TransferSpec("transfer4", "cross_domain", "cross_domain_4shot", 4, "cross-domain generalisation"),
    "table5": TransferSpec("transfer4", "cross_dataset", "cross_dataset_4shot", 5, "cross-dataset generalisation"),
}
# the rows of Tables 2-5, in the paper's order (those the experiment ran are shown)
TRANSFER_METHODS = ("CLIP", "CoOp", "CoCoOp", "VPT", "UNIGRAM", "CoOp+GRAM", "VPT+GRAM")
TRANSFER_NOTEBOOK = "notebooks/11_transfer_tables.ipynb"


@dataclass
class TransferReport:
    """One of Tables 2-5, built from the suite's rows (and written, see :func:`transfer_report`)."""

    key: str  # "table2" ... "table5"
    spec: TransferSpec
    rows: pd.DataFrame  # the experiment's result rows (both views)
    stamp: dict[str, Any]  # provenance of the rows (:func:`gramlib.experiments.suite.experiment_rows`)
    methods: list[str]  # TRANSFER_METHODS that the experiment ran
    table: pd.DataFrame  # TABLE_COLUMNS: source, each target and Average (over the targets)
    markdown: str  # ours, in the paper's layout
    check: pd.DataFrame  # direction_check of the GRAM pairs on the target average and on the source
    paper_deltas: pd.DataFrame  # gram_deltas of the paper's own table on its target average
    headline: str  # "Target average: <method> <mean>, ..."
    title: str  # "Table <N>: <view> generalisation (<shots> shots)"
    paths: dict[str, Path] = field(default_factory=dict)  # what was written (empty when not written)
    shared: dict[str, list[str]] = field(default_factory=dict)  # target -> class names it shares with the source


def shared_labels(source: Sequence[str], targets: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """The class names each target shares with the source (case- and ``_``-insensitive), in target order.

    Cross-dataset transfer (Tables 3, 5) measures a prompt on labels it was not tuned on only where
    these lists are empty; a shared label is a cross-domain test in disguise.
    """
    def norm(name: str) -> str:
        return " ".join(name.replace("_", " ").lower().split())

    src = {norm(c) for c in source}
    return {t: [c for c in names if norm(c) in src] for t, names in targets.items()}


def shared_labels_markdown(shared: dict[str, list[str]], source: str) -> str:
    """One sentence per table: which targets share labels with ``source`` (or that none does)."""
    if not shared:
        return ""
    hit = {t: names for t, names in shared.items() if names}
    if not hit:
        return f"No target shares a class name with the source `{source}` ({len(shared)} targets checked).\n"
    parts = "; ".join(f"`{t}`: {len(n)} ({', '.join(n[:5])}{', ...' if len(n) > 5 else ''})" for t, n in hit.items())
    return f"Class names shared with the source `{source}`: {parts}.\n"


def dataset_classnames(profile: Any, names: Sequence[str]) -> dict[str, list[str]]:
    """Each dataset's class names, read from the profile's CoOp data root (no images opened)."""
    from gramlib.data.coop import load_dataset

    root = profile.root / profile.coop_dir
    return {n: list(load_dataset(root, n).classnames) for n in names}


def transfer_report(key: str, profile: Any, reports_dir: str | Path | None = None, *,
                    seeds: Sequence[int] | None = None, shots: int | None = None, run: bool = False,
                    notebook: str = TRANSFER_NOTEBOOK) -> TransferReport:
    """Build Table 2, 3, 4 or 5 (``key`` of :data:`TRANSFER_TABLES`) and, with ``reports_dir``, write
    ``<reports_dir>/tables/table<N>_<slug>.{csv,md,provenance.json}`` (:func:`save_table`).

    ``profile`` is a Profile or a profile name; ``seeds``/``shots``/``run`` are passed to
    :func:`gramlib.experiments.suite.experiment_rows` (None: the DVC stage's rows). The direction
    check compares the GRAM pairs' effect on the target average and on the source with the paper's.
    """
    from gramlib.config import get_profile
    from gramlib.experiments.suite import experiment_rows
    from gramlib.reference import paper_table

    if key not in TRANSFER_TABLES:
        raise ValueError(f"unknown transfer table {key!r}; known: {sorted(TRANSFER_TABLES)}")
    spec = TRANSFER_TABLES[key]
    prof = get_profile(profile) if isinstance(profile, str) else profile
    rows, stamp = experiment_rows(prof, spec.experiment, seeds=seeds, shots=shots, run=run)
    ran = set(rows["method"])
    methods = [m for m in TRANSFER_METHODS if m in ran]
    table = transfer_table(rows, spec.view, stamp["shots"], prof.source)
    markdown = transfer_markdown(table, prof.source, methods)
    ref = paper_table(spec.number)
    metric = f"acc_{stamp['shots']}shot"
    view = rows[(rows["protocol"] == spec.view) & (rows["shots"] == stamp["shots"])]
    check = pd.concat([direction_check(table, spec.number, [metric], dataset=d, paper_dataset=pd_, rows=view,
                                       average_excludes=(prof.source,)).assign(where=w)
                       for d, pd_, w in (("Average", "Average", "target average"),
                                         (prof.source, ref["dataset"].iloc[0], "source"))],
                      ignore_index=True)
    paper_deltas = gram_deltas(ref.rename(columns={"value": "mean"}), str(ref["metric"].iloc[0]), "Average")
    avg = table[table["dataset"] == "Average"].set_index("method")["mean"]
    headline = "Target average: " + ", ".join(f"{m} {avg[m]:.2f}" for m in methods if m in avg.index)
    title = f"Table {spec.number}: {spec.title} ({stamp['shots']} shots)"
    shared: dict[str, list[str]] = {}
    if spec.view == "cross_dataset":
        targets = [d for d in dict.fromkeys(table["dataset"]) if d not in (prof.source, "Average")]
        names = dataset_classnames(prof, [prof.source, *targets])
        shared = shared_labels(names[prof.source], {t: names[t] for t in targets})
    report = TransferReport(key, spec, rows, stamp, methods, table, markdown, check, paper_deltas, headline, title,
                            shared=shared)
    if reports_dir is not None:
        report.paths = save_table(table, spec.number, spec.slug, reports_dir,
                                  markdown + ("\n" + shared_labels_markdown(shared, prof.source) if shared else ""),
                                  {**stamp, "title": title, "headline": headline, "notebook": notebook,
                                   **({"shared_labels": shared} if shared else {})})
    return report
