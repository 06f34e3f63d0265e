"""Issue 14, the paired checks' standard error: three estimates of the error of Table 1's mean paired difference.

A measurement script, not part of the pipeline (it reads the mini profile's committed suite results). The tables'
paired check (`gramlib.reporting.tables.paired_difference`) counts the 21 (dataset, seed) units as independent:
s^2 / 21 with 20 df. Two alternatives: the spread of the per-seed averages over datasets (variance / 3, 2 df),
which would see an error shared by every dataset of a seed (paired meta seeds: data seed s tunes from
meta-training run s on every dataset), and the datasets' seed spreads pooled (sum of s_d^2 / 3 over D^2, 14 df),
which treats the datasets as fixed. The units' estimate has the largest standard error on all nine checks.

Usage (repo root, venv on PATH):
  python notes/prototypes/paired_estimators.py > notes/prototypes/paired_estimators_<date>.txt
"""

import numpy as np

from gramlib.config import get_profile
from gramlib.experiments.suite import experiment_rows
from gramlib.reporting import tables as T

rows, _ = experiment_rows(get_profile("mini"), "base2new")
scores = T.unit_scores(rows)
for a, b in (("CoOp", "CoOp+GRAM"), ("VPT", "VPT+GRAM"), ("CLIP", "CoOp")):
    for m in ("base", "new", "H"):
        u = T.paired_units(scores, a, b, m, "Average", ())
        d = (u[b] - u[a]).rename("d").reset_index()
        n = len(d)
        units = d.d.var(ddof=1) / n
        per_seed = d.groupby("seed").d.mean()
        clustered = per_seed.var(ddof=1) / len(per_seed)
        g = d.groupby("dataset").d
        pooled = (g.var(ddof=1) / g.count()).sum() / g.ngroups ** 2
        print(f"{b} - {a} {m}: mean {d.d.mean():+.2f}; se units {np.sqrt(units):.2f} (df {n - 1}), "
              f"per-seed averages {np.sqrt(clustered):.2f} (df {len(per_seed) - 1}), "
              f"datasets pooled {np.sqrt(pooled):.2f} (df {g.ngroups * (len(per_seed) - 1)}); "
              f"per-seed means {per_seed.round(2).tolist()}")
