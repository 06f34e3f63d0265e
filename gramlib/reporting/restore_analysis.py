"""The feature-shift lens on finished runs: RESTORE's Figure 3 claim, extended to every method here.

RESTORE (§3.3, Fig. 3) reads the generalisation of a prompt learner off the *inter-modal discrepancy*
of its feature shifts: the more the image and text towers' per-block shifts ‖Ω_l‖_F differ, the worse
the tuned model does on new classes. The suite measures each unit's final per-block norms on the new
split (``gramlib.experiments.suite.shift_rows``); this module turns them into one discrepancy per run
(:func:`gramlib.restore.shift_discrepancy`), pairs it with that run's new-class accuracy, and checks
the paper's claims on the RESTORE tables (its ablations have no numbers we could transcribe, so a
claim is a sign: "λ_fs up → new up").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from gramlib.restore.consistency import shift_discrepancy
from gramlib.reporting.tables import final_epoch

RUN = ["method", "seed", "dataset"]


def unit_discrepancy(shifts: pd.DataFrame) -> pd.DataFrame:
    """Per run (method, seed, dataset): ``discrepancy`` (eq. 9 per paired block), ``shift_vision`` and
    ``shift_text`` (Σ_l ‖Ω_l‖_F of each tower, the magnitudes RESTORE's surgery reacts to)."""
    out = []
    for key, g in shifts.groupby(RUN, sort=False):
        v = g[g["tower"] == "vision"].sort_values("layer")["norm"].to_numpy(dtype=np.float64)
        t = g[g["tower"] == "text"].sort_values("layer")["norm"].to_numpy(dtype=np.float64)
        out.append({**dict(zip(RUN, key)), "discrepancy": shift_discrepancy(torch.tensor(v), torch.tensor(t)),
                    "shift_vision": float(v.sum()), "shift_text": float(t.sum())})
    return pd.DataFrame(out, columns=RUN + ["discrepancy", "shift_vision", "shift_text"])


def common_datasets(frame: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """Datasets on which every one of ``methods`` has a run (so method averages are comparable)."""
    sets = [set(frame.loc[frame["method"] == m, "dataset"]) for m in methods]
    return sorted(set.intersection(*sets)) if sets else []


def shift_vs_accuracy(shifts: pd.DataFrame, rows: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per method and seed: discrepancy, tower shifts and new/base accuracy, each averaged over the
    datasets that all ``methods`` share (final epoch of each run)."""
    disc = unit_discrepancy(shifts[shifts["method"].isin(methods)])
    acc = final_epoch(rows[(rows["protocol"] == "base2new") & rows["method"].isin(methods)])
    acc = acc.pivot_table(index=RUN, columns="split", values="accuracy").reset_index()
    both = disc.merge(acc, on=RUN, how="inner")
    present = [m for m in methods if m in set(both["method"])]
    missing = sorted(set(methods) - set(present))
    if missing:
        raise ValueError(f"no feature-shift and accuracy rows for methods {missing}")
    keep = common_datasets(both, present)
    both = both[both["dataset"].isin(keep)]
    cols = ["discrepancy", "shift_vision", "shift_text", "base", "new"]
    per_seed = both.groupby(["method", "seed"], sort=False)[cols].mean().reset_index()
    per_seed["n_datasets"] = len(keep)
    order = {m: i for i, m in enumerate(present)}
    return per_seed.sort_values(["method", "seed"], key=lambda s: s.map(order) if s.name == "method" else s).reset_index(drop=True)


def method_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of :func:`shift_vs_accuracy`'s columns, one row per method."""
    cols = ["discrepancy", "shift_vision", "shift_text", "base", "new"]
    g = per_seed.groupby("method", sort=False)
    out = g[cols].mean().add_suffix("_mean").join(g[cols].std(ddof=1).add_suffix("_std"))
    out["n_seeds"] = g["seed"].nunique()
    return out.reset_index()


def rank_correlation(summary: pd.DataFrame, x: str = "discrepancy_mean", y: str = "new_mean") -> dict[str, float]:
    """Spearman's ρ and Pearson's r over methods (RESTORE claims a negative association)."""
    from scipy import stats

    if len(summary) < 3:
        return {"spearman": float("nan"), "pearson": float("nan"), "n_methods": len(summary)}
    rho = stats.spearmanr(summary[x], summary[y]).statistic
    r = stats.pearsonr(summary[x], summary[y]).statistic
    return {"spearman": float(rho), "pearson": float(r), "n_methods": int(len(summary))}


def plot_shift_vs_accuracy(per_seed: pd.DataFrame, summary: pd.DataFrame, title: str = ""):
    """New-class accuracy against the inter-modal discrepancy: one point per seed, a cross per method
    (mean ± std over seeds)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(summary.itertuples()):
        color = cmap(i % 10)
        pts = per_seed[per_seed["method"] == r.method]
        ax.scatter(pts["discrepancy"], pts["new"], s=14, alpha=0.45, color=color)
        ax.errorbar(r.discrepancy_mean, r.new_mean, xerr=np.nan_to_num(r.discrepancy_std),
                    yerr=np.nan_to_num(r.new_std), fmt="o", ms=6, capsize=3, color=color, label=r.method)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("inter-modal feature-shift discrepancy  mean_l (‖Ω_l^v‖ − ‖Ω_l^t‖)²  (symlog)")
    ax.set_ylabel("new-class accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def claim_check(table: pd.DataFrame, claims: Sequence[tuple[str, str, str, int]], dataset: str = "Average") -> pd.DataFrame:
    """Each claim (a, b, metric, sign): does ``b − a`` on ``metric`` have the sign the paper reports?"""
    sub = table[table["dataset"] == dataset].set_index(["method", "metric"])["mean"]
    out = []
    for a, b, metric, sign in claims:
        if (a, metric) not in sub.index or (b, metric) not in sub.index:
            continue
        d = float(sub[(b, metric)] - sub[(a, metric)])
        out.append({"change": f"{a} → {b}", "metric": metric, "ours": d, "paper_sign": "+" if sign > 0 else "−",
                    "same_direction": bool(np.sign(d) == np.sign(sign))})
    return pd.DataFrame(out, columns=["change", "metric", "ours", "paper_sign", "same_direction"])


__all__ = ["claim_check", "common_datasets", "method_summary", "plot_shift_vs_accuracy", "rank_correlation",
           "shift_vs_accuracy", "unit_discrepancy"]
