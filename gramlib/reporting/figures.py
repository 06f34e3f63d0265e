"""Figures 1a, 1b, 3a and 3b: the data each one shows (pure functions of result rows or meta logs)
and the plots (matplotlib, no dates, saved byte-stable by :func:`gramlib.reporting.provenance.save_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from gramlib.reference.audit import harmonic_mean
from gramlib.reporting.tables import dataset_parts, final_epoch, with_intervals
from gramlib.test_draw import FOLD_COLUMNS


def epoch_curves(rows: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean accuracy over datasets per (method, split, epoch, seed), then mean and std over seeds.

    Figures 1b and 3a average the per-dataset accuracies of each epoch, as the paper's "averaged
    few-shot performance per epoch". Only epochs evaluated for every dataset of a run count.
    """
    r = _trained_epochs(rows, methods)
    n_ds = r.groupby(["method", "seed"])["dataset"].nunique().rename("n_ds")
    per = r.groupby(["method", "split", "epoch", "seed"]).agg(acc=("accuracy", "mean"), n=("dataset", "nunique"))
    per = per.reset_index().join(n_ds, on=["method", "seed"])
    per = per[per["n"] == per["n_ds"]]
    out = per.groupby(["method", "split", "epoch"])["acc"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n_seeds"})


def _trained_epochs(rows: pd.DataFrame, methods: Sequence[str] | None) -> pd.DataFrame:
    """The base-to-new rows of evaluated training epochs (epoch 0 is the untrained prompt), of ``methods``."""
    r = rows[(rows["protocol"] == "base2new") & (rows["epoch"] > 0)]
    return r if methods is None else r[r["method"].isin(methods)]


def dataset_curves(rows: pd.DataFrame, methods: Sequence[str] | None = None, split: str = "new") -> pd.DataFrame:
    """Accuracy per (method, split, dataset, epoch), mean over seeds: the curves :func:`epoch_curves` averages.

    A dataset average can fall and recover where no dataset does, or hide a fall on some datasets under a rise
    on others; Figure 1b's reading needs the datasets one by one.
    """
    r = _trained_epochs(rows, methods)
    r = r[r["split"] == split]
    return r.groupby(["method", "split", "dataset", "epoch"])["accuracy"].mean().rename("mean").reset_index()


def turning_points(curves: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per curve (``curves``' rows grouped by ``by``, columns epoch and mean): its first and final accuracy, its
    highest and lowest and at which epoch (the first such on ties), and how far the final epoch is from each.

    A fall that later epochs partly win back is not a steady decline, and the two ends alone cannot tell them apart.
    """
    out = []
    for key, c in curves.sort_values("epoch").groupby(list(by), sort=True):  # a list of keys: key is a tuple
        hi, lo = c.loc[c["mean"].idxmax()], c.loc[c["mean"].idxmin()]
        out.append({**dict(zip(by, key)), "first": float(c["mean"].iloc[0]),
                    "highest": float(hi["mean"]), "highest_epoch": int(hi["epoch"]),
                    "lowest": float(lo["mean"]), "lowest_epoch": int(lo["epoch"]), "final": float(c["mean"].iloc[-1])})
    t = pd.DataFrame(out)
    t["fall_from_highest"] = t["highest"] - t["final"]
    t["back_from_lowest"] = t["final"] - t["lowest"]
    return t


def init_spread(rows: pd.DataFrame) -> pd.DataFrame:
    """Per initialisation (method label): dataset-averaged base, new and H at the last epoch."""
    r = final_epoch(rows[rows["protocol"] == "base2new"])
    per = r.pivot_table(index=["method", "seed", "dataset"], columns="split", values="accuracy").reset_index()
    avg = per.groupby(["method", "seed"])[["base", "new"]].mean().reset_index()
    avg["H"] = harmonic_mean(avg["base"], avg["new"])
    return avg


def plot_curves(curves: pd.DataFrame, methods: Sequence[str], splits: Sequence[str] = ("base", "new"),
                title: str = "", colors: Mapping[str, str] | None = None):
    """One panel per split: accuracy per epoch (mean over seeds, band = ± std)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for m in methods:
            c = curves[(curves["method"] == m) & (curves["split"] == split)].sort_values("epoch")
            if c.empty:
                continue
            color = (colors or {}).get(m)
            ls = "-" if "GRAM" in m else "--"
            ax.plot(c["epoch"], c["mean"], ls, marker="o", ms=3, label=m, color=color)
            if c["std"].notna().any():
                ax.fill_between(c["epoch"], c["mean"] - c["std"].fillna(0), c["mean"] + c["std"].fillna(0),
                                alpha=0.15, color=ax.lines[-1].get_color())
        _epoch_axis(ax, f"{split}-class accuracy (%)", f"{split} classes")
    return _finish(fig, title)


def plot_dataset_curves(curves: pd.DataFrame, methods: Sequence[str], title: str = ""):
    """One panel per dataset: each method's accuracy per epoch (:func:`dataset_curves`, mean over seeds)."""
    import matplotlib.pyplot as plt

    datasets = sorted(curves["dataset"].unique())
    ncols = min(4, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False)
    for ax, d in zip(axes.flat, datasets):
        for m in methods:
            c = curves[(curves["method"] == m) & (curves["dataset"] == d)].sort_values("epoch")
            if not c.empty:
                ax.plot(c["epoch"], c["mean"], "-" if "GRAM" in m else "--", marker="o", ms=2, label=m)
        _epoch_axis(ax, f"{curves['split'].iloc[0]}-class accuracy (%)", d)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    return _finish(fig, title)


def _epoch_axis(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _finish(fig, title: str):
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_init_spread(spread: pd.DataFrame, reference: str | None = None, metrics: Sequence[str] = ("base", "new", "H")):
    """Figure 1a: each initialisation's dataset-averaged accuracy; the spread is the claim."""
    import matplotlib.pyplot as plt

    inits = [m for m in dict.fromkeys(spread["method"]) if m != reference]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        vals = [spread.loc[spread["method"] == m, metric].mean() for m in inits]
        ax.bar(range(len(inits)), vals, color=["C0" if "random" not in m else "C1" for m in inits])
        if reference is not None and (spread["method"] == reference).any():
            ax.axhline(spread.loc[spread["method"] == reference, metric].mean(), color="C3", ls="--",
                       label=f"{reference} (meta-learned θ*)")
            ax.legend(fontsize=7, loc="lower right")
        lo, hi = np.nanmin(vals), np.nanmax(vals)
        pad = max(1.0, 0.6 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(inits)))
        ax.set_xticklabels([m.replace("CoOp init ", "") for m in inits], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{metric}: spread {hi - lo:.1f} points")
        ax.set_ylabel("accuracy (%)")
    fig.suptitle("CoOp accuracy by prompt initialisation (average over datasets)")
    fig.tight_layout()
    return fig


def grad_alignment(logs: Mapping[str, pd.DataFrame], window: int = 25) -> pd.DataFrame:
    """Figure 3b data: per run and step, the smoothed cosine of R^φ(g_support) and g_query (eq. 12)."""
    out = []
    for name, df in logs.items():
        d = df[["step", "grad_cosine", "grad_cosine_raw"]].copy()
        d["regulated"] = d["grad_cosine"].rolling(window, min_periods=1).mean()
        d["raw"] = d["grad_cosine_raw"].rolling(window, min_periods=1).mean()
        d["run"] = name
        out.append(d[["run", "step", "regulated", "raw"]])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["run", "step", "regulated", "raw"])


def plot_grad_alignment(curves: pd.DataFrame, runs: Sequence[str]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, run in enumerate(runs):
        c = curves[curves["run"] == run]
        if c.empty:
            continue
        ax.plot(c["step"], c["regulated"], color=f"C{i}", label=f"{run}: cos(R^φ(g_s), g_q)")
        ax.plot(c["step"], c["raw"], color=f"C{i}", ls=":", alpha=0.7, label=f"{run}: cos(g_s, g_q), raw")
    ax.set_xlabel("meta-training step")
    ax.set_ylabel("normalised inner product")
    ax.set_title("support/query gradient alignment during meta-training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fit_room(rows: pd.DataFrame, epochs: Sequence[int], probe: pd.DataFrame | None = None,
             average_name: str = "Average") -> pd.DataFrame:
    """How far tuning fits its own K shots: TABLE_COLUMNS rows (metric = split) per dataset and averaged.

    ``rows``: an experiment run with ``train_split`` (splits train, base, new); one row label per
    (method, epoch in ``epochs``), e.g. "CoOp @ epoch 10". ``probe``: columns dataset, seed, train,
    base (a linear probe on the same few-shot features, :mod:`gramlib.experiments.linear_probe`), labelled
    "linear probe". The average is taken over datasets within a seed, then over seeds. The base and new test
    rows' intervals also count the draw of the test images (their fold scores, :mod:`gramlib.test_draw`); the
    train rows' do not (the seeds redraw the shots themselves), nor the linear probe's (no per-image scores).
    """
    r = rows[(rows["protocol"] == "base2new") & rows["epoch"].isin(list(epochs))].copy()
    r["label"] = r["method"] + " @ epoch " + r["epoch"].astype(int).astype(str)
    long = r[["label", "dataset", "seed", "split", "accuracy"]]
    if probe is not None and len(probe):
        p = probe.melt(id_vars=["dataset", "seed"], value_vars=["train", "base"], var_name="split", value_name="accuracy")
        long = pd.concat([long, p.assign(label="linear probe")], ignore_index=True)
    per = long.groupby(["label", "split", "dataset", "seed"], sort=False)["accuracy"].mean().reset_index()
    avg = per.groupby(["label", "split", "seed"], sort=False)["accuracy"].mean().reset_index().assign(dataset=average_name)
    both = pd.concat([per, avg], ignore_index=True)
    out = both.groupby(["dataset", "label", "split"], sort=False)["accuracy"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"label": "method", "split": "metric", "count": "n_seeds"})
    return with_intervals(out, test_draw=_fit_room_test_draw(r, average_name))


def _fit_room_test_draw(rows: pd.DataFrame, average_name: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(dataset, label, split) -> the test-draw (variance, df) of the seed-averaged base and new test accuracy."""
    test = rows[rows["split"].isin(["base", "new"])]
    if test.empty or not set(FOLD_COLUMNS) <= set(test.columns):
        return {}
    folds = test.groupby(["label", "split", "dataset"], sort=False)[list(FOLD_COLUMNS)].mean()
    out = {}
    for (label, split), g in folds.groupby(level=[0, 1], sort=False):
        per, avg = dataset_parts(g.droplevel([0, 1]))
        out.update({(d, label, split): part for d, part in per.items()})
        out[(average_name, label, split)] = avg
    return out


def plot_fit_room(curves: pd.DataFrame, methods: Sequence[str], probe_train: float | None = None, title: str = ""):
    """One panel per method: accuracy on the K-shot training images, base test and new test per
    epoch (dataset average), with the linear probe's training accuracy as the room to fit."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        for split, style, label in (("train", "-", "its K-shot training images"), ("base", "--", "base-class test"),
                                    ("new", ":", "new-class test")):
            c = curves[(curves["method"] == m) & (curves["split"] == split)].sort_values("epoch")
            if not c.empty:
                ax.plot(c["epoch"], c["mean"], style, marker="o", ms=2, label=label)
        if probe_train is not None:
            ax.axhline(probe_train, color="grey", lw=1, label="linear probe on the training images")
        _epoch_axis(ax, "accuracy (%)", m)
    return _finish(fig, title)


def fit_room_markdown(room: pd.DataFrame, dataset: str = "Average") -> str:
    """The :func:`fit_room` rows of one dataset as a markdown table: a row per method label, train/base/new."""
    sub = room[room["dataset"] == dataset]
    metrics = [m for m in ("train", "base", "new") if m in set(sub["metric"])]
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, g in sub.groupby("method", sort=False):
        cell = {r.metric: (f"{r.mean:.2f}" if pd.isna(r.std) else f"{r.mean:.2f} ± {r.std:.2f}") for r in g.itertuples()}
        lines.append(f"| {label} | " + " | ".join(cell.get(m, "") for m in metrics) + " |")
    return "\n".join(lines) + "\n"
