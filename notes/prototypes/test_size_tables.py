"""Issue 14, resolving power: how far do Table 1's rows and verdicts move when every test split has 200 images
per class instead of 50?

A comparison script, not part of the pipeline. It reads two runs' base-to-new rows (`artifacts/mini/suite/
base2new.csv`): the committed pipeline's, and a full `dvc repro` of a copy of the repository whose
`data/spec/miniworld.yaml` gives every dataset `test: 200` (images are pure functions of (world seed, dataset,
label, split, index), so the training pools, the shots and the first 50 test images of every class are the
committed ones; only the test sets grow). It prints, side by side, Table 1's average rows (base, new, H with
their intervals) and its paired "method A vs method B" checks (the notebook's `direction_check`, GRAM's pairs
and CoOp against zero-shot CLIP); with `--transfer <copy root>`, the paired checks of Tables 2-5 too (each
root's own code and artifacts, through `transfer_report`, in a subprocess with that root first on the path).

Usage (repo root, venv on PATH):
  python notes/prototypes/test_size_tables.py artifacts/mini/suite/base2new.csv <copy>/artifacts/mini/suite/base2new.csv
  python notes/prototypes/test_size_tables.py --transfer <copy root>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from gramlib.reporting import tables as T

METHODS = ["CLIP", "CoOp", "CoCoOp", "VPT", "UNIGRAM", "CoOp+GRAM", "VPT+GRAM"]  # notebook 10's Table 1
PAIRS = (*T.GRAM_PAIRS, ("CLIP", "CoOp"))


def table1(path: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = pd.read_csv(path)
    rows = rows[rows["method"].isin(METHODS) & (rows["shots"] == 16) & rows["seed"].isin([1, 2, 3])]
    table = T.base_to_new_table(rows)
    check = T.direction_check(table, 1, ["base", "new", "H"], pairs=PAIRS, rows=rows)
    n_test = T.final_epoch(rows).groupby(["dataset", "split"])["n_test"].first().unstack()
    return table, check, n_test


def main(committed: str, larger: str) -> None:
    pd.set_option("display.width", 220)
    (t50, c50, n50), (t200, c200, n200) = table1(committed), table1(larger)
    print("test images per split (base / new), committed -> larger:")
    print(pd.concat({"committed": n50, "larger": n200}, axis=1).to_string())
    avg = lambda t: t[t["dataset"] == "Average"].set_index(["method", "metric"])[["mean", "ci_low", "ci_high"]]
    both = avg(t50).merge(avg(t200), left_index=True, right_index=True, suffixes=("_50", "_200"))
    both["moved"] = both["mean_200"] - both["mean_50"]
    both["half_width_50"] = (both["ci_high_50"] - both["ci_low_50"]) / 2
    print("\nTable 1, average over datasets (interval over (dataset, seed) units):")
    print(both.round(2).to_string())
    keys = ["pair", "metric"]
    cols = ["ours", "ci_low", "ci_high", "p_value", "verdict"]
    cmp = c50.set_index(keys)[cols].merge(c200.set_index(keys)[cols], left_index=True, right_index=True,
                                          suffixes=("_50", "_200"))
    print("\npaired checks (b - a per (dataset, seed) unit), committed test sets vs 200 per class:")
    print(cmp.round(3).to_string())
    changed = cmp[cmp["verdict_50"] != cmp["verdict_200"]]
    print(f"\nverdicts that change: {len(changed)} of {len(cmp)}")
    if len(changed):
        print(changed[["ours_50", "verdict_50", "ours_200", "verdict_200"]].round(2).to_string())


def transfer_checks() -> list[dict]:
    """The paired checks of Tables 2-5 in this process's repository (its artifacts, the mini profile)."""
    out = []
    for key in T.TRANSFER_TABLES:
        check = T.transfer_report(key, "mini").check
        out += check.assign(table=key).to_dict(orient="records")
    return out


def compare_transfer(copy: str) -> None:
    runs = {}
    for name, root in (("50", os.getcwd()), ("200", copy)):
        env = dict(os.environ, PYTHONPATH=root)
        res = subprocess.run([sys.executable, __file__, "--dump-transfer"], cwd=root, env=env, capture_output=True,
                             text=True, check=True)
        runs[name] = pd.DataFrame(json.loads(res.stdout.strip().splitlines()[-1]))
    keys = ["table", "where", "pair"]
    cols = ["ours", "ci_low", "ci_high", "p_value", "verdict"]
    cmp = runs["50"].set_index(keys)[cols].merge(runs["200"].set_index(keys)[cols], left_index=True,
                                                  right_index=True, suffixes=("_50", "_200"))
    pd.set_option("display.width", 240)
    print("Tables 2-5, paired checks (b - a), committed test sets vs 200 per class:")
    print(cmp.round(3).to_string())
    changed = cmp[cmp["verdict_50"] != cmp["verdict_200"]]
    print(f"\nverdicts that change: {len(changed)} of {len(cmp)}")


if __name__ == "__main__":
    if sys.argv[1] == "--dump-transfer":
        print(json.dumps(transfer_checks(), default=float))
    elif sys.argv[1] == "--transfer":
        compare_transfer(sys.argv[2])
    else:
        main(*sys.argv[1:])
