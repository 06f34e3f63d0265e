"""Which datasets carry each of the world probe's CoOp bars? (issue 14, 2026-12-06, a seventh session)

Reads the 16-seed probe (seeds 1-12 and 101-104, the same file as decay_bar_power.py) and gives, per dataset,
each bar's value (base gain, zero-shot minus new at 10 epochs, the 10 -> 50 epoch decay of new-class accuracy)
as a mean over the 16 data seeds with a 95 % t-interval over them, and whether the dataset shows each of the
paper's three directions with its whole interval. No training.

    python notes/prototypes/bars_by_dataset.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gramlib.stats import mean_interval

HERE = Path(__file__).parent
SRC = HERE / "world_probe_seeds1-12_101-104_cli_2026-12-06.json"
BARS = {  # name: (value from a unit's columns, the bar's threshold)
    "base_gain": (lambda u: u["coop10_base"] - u["zs_base"], 5.0),
    "zs_minus_new": (lambda u: u["zs_new"] - u["coop10_new"], 0.0),
    "decay": (lambda u: u["coop10_new"] - u["coop50_new"], 2.0),
}


def main() -> pd.DataFrame:
    units = pd.DataFrame(json.loads(SRC.read_text())["units"])
    rows = []
    for dataset, u in units.groupby("dataset"):
        row = {"dataset": dataset, "n_seeds": len(u)}
        for name, (value, _) in BARS.items():
            mean, low, high = mean_interval(value(u))
            row.update({name: mean, f"{name}_low": low, f"{name}_high": high})
        # the paper's direction, resolved: the whole interval on the paper's side of zero
        row["paper_directions"] = sum(row[f"{name}_low"] > 0 for name in BARS)
        rows.append(row)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    table = main()
    pd.set_option("display.width", 200)
    print(table.round(2).to_string(index=False))
    print("datasets mean:", table[list(BARS)].mean().round(2).to_dict())
