"""The world probe (mini) under a given suite.lr_translation and probe seeds, written to another file.

Usage: python notes/prototypes/lr_translation_probe.py temperature 5,6,7,8 /tmp/probe.json 1  (translation,
seeds, output, threads); results of 2026-12-05: world_probe_lr_temperature_seeds*_2026-12-05.json beside it;
of 2026-12-06 (16 seeds, with the bars' intervals): world_probe_lr_temperature_seeds1-12_101-104_2026-12-06.json.
"""
import sys
from gramlib.config import get_profile, load_params
from gramlib.experiments.world_probe import probe_config, run_probe
tr, seeds, out = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3]
params = load_params()
params["profiles"]["mini"].setdefault("suite", {})["lr_translation"] = tr
params["profiles"]["mini"].setdefault("probe", {})["seeds"] = seeds
prof = get_profile("mini", params)
r = run_probe(prof, probe_config("mini", params), out, params=params, threads=int(sys.argv[4]))
print({k: round(r[k], 2) for k in ["zs_base", "zs_new", "coop10_base", "coop10_new", "coop50_base", "coop50_new", "probe_base", "shot_overlap"]})
print({k: (round(v["value"], 2), v["met"]) for k, v in r["bars"].items()}, round(r["probe_seconds"]), "s")
