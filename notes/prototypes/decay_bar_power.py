"""How many data seeds does the world probe need to resolve the decay bar? (issue 14, 2026-12-06)

Reads the 16-seed probe (seeds 1-12 and 101-104, `gramlib probe --profile mini --seeds ... --out ...`) and
answers, without any new training: (1) of the 120 pairs of these seeds, how many give a 2-seed mean decay >= 2 (the issue's point check),
and how many a 95 % interval whose lower end clears 2 (the probe's verdict "met"); (2) from the per-dataset
spread across seeds, the expected interval half-width at n seeds, and the smallest n at which the 16-seed mean
decay (2.74) would clear 2 with its whole interval. The interval is the probe's own (stratified_interval).

    python notes/prototypes/decay_bar_power.py
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from gramlib.experiments.world_probe import stratified_interval

HERE = Path(__file__).parent
SRC = HERE / "world_probe_seeds1-12_101-104_cli_2026-12-06.json"  # gramlib probe --seeds ..., clean commit


def main() -> dict:
    units = pd.DataFrame(json.loads(SRC.read_text())["units"])
    units["decay"] = units["coop10_new"] - units["coop50_new"]
    seeds = sorted(units["seed"].unique())
    pairs = []
    for a, b in itertools.combinations(seeds, 2):
        u = units[units["seed"].isin([a, b])]
        m, lo, hi = stratified_interval(u["decay"], u["dataset"])
        pairs.append({"seeds": [int(a), int(b)], "mean": m, "ci_low": lo, "ci_high": hi})
    pairs_df = pd.DataFrame(pairs)
    sd = units.groupby("dataset")["decay"].std(ddof=1)  # per dataset, across the 16 seeds
    mean16 = float(units.groupby("dataset")["decay"].mean().mean())
    d = len(sd)

    def half_width(n: int) -> float:
        v = sd.to_numpy() ** 2 / n
        dof = v.sum() ** 2 / float(np.sum(v ** 2 / (n - 1)))
        return float(stats.t.ppf(0.975, dof)) * float(np.sqrt(v.sum())) / d

    widths = {n: half_width(n) for n in range(2, 17)}
    need = next((n for n, h in widths.items() if mean16 - h >= 2.0), None)
    se2 = float(np.sqrt((sd.to_numpy() ** 2 / 2).sum())) / d
    out = {
        "source": SRC.name,
        "mean_decay_16_seeds": mean16,
        "per_dataset_sd_across_seeds": sd.round(3).to_dict(),
        "pairs": len(pairs_df),
        "pairs_mean_ge_2": int((pairs_df["mean"] >= 2).sum()),
        "pairs_ci_low_ge_2": int((pairs_df["ci_low"] >= 2).sum()),
        "pairs_ci_high_lt_2": int((pairs_df["ci_high"] < 2).sum()),
        "seeds_1_2": pairs_df[pairs_df["seeds"].apply(lambda s: s == [1, 2])].iloc[0].to_dict(),
        "rank_of_seeds_1_2_among_pairs": int((pairs_df["mean"] < pairs_df.loc[0, "mean"]).sum()) + 1,
        "normal_p_2seed_mean_ge_2": float(stats.norm.sf((2.0 - mean16) / se2)),
        "half_width_by_n_seeds": {n: round(h, 3) for n, h in widths.items()},
        "seeds_needed_for_ci_low_ge_2_at_the_16_seed_mean": need,
    }
    (HERE / "decay_bar_power_2026-12-06.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=float))
