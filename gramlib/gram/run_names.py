"""Names of meta-training runs: a variant of params.yaml's ``meta.variants``, optionally repeated with
another task-sampler seed (``<variant>@seed<s>``).

Why: one meta-training run's draw of tasks moved a GRAM row by more than the few-shot data seeds did
(issue 14), so a row's spread must include meta-training draws. ``meta_seeds: paired`` tunes data seed s
from run s; seed 1 is the variant itself, so pairing adds runs for seeds 2, 3, ... only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SEED_TAG = "@seed"


def seeded_run(name: str, seed: int) -> str:
    """The run ``name`` repeated with task-sampler seed ``seed``; seed 1 is ``name`` itself."""
    if seed < 1:
        raise ValueError(f"run {name!r}: seeds are >= 1, got {seed}")
    return name if seed == 1 else f"{name}{SEED_TAG}{seed}"


def split_run(name: str) -> tuple[str, int | None]:
    """(variant, seed or None) of a run name: ``coop_gram@seed2`` -> ("coop_gram", 2)."""
    base, tag, seed = name.rpartition(SEED_TAG)
    if not tag:
        return name, None
    if not base or not seed.isdigit() or int(seed) < 1:
        raise ValueError(f"run name {name!r}: expected <variant>{SEED_TAG}<seed >= 1>")
    return base, int(seed)


def with_seed(cfg: Any, name: str, seed: int | None) -> Any:
    """``cfg`` (a run's dataclass configuration) with task-sampler ``seed``: a seeded run repeats a variant
    whose own seed is 1 (else ``@seed1`` and the variant would be two names for one run, or none)."""
    if seed is None:
        return cfg
    if cfg.seed != 1:
        raise ValueError(f"run {name!r}: {SEED_TAG}<s> repeats a variant whose own seed is 1 (seed 1 is the "
                         f"variant itself); this variant's seed is {cfg.seed}")
    return dataclasses.replace(cfg, seed=seed)


__all__ = ["SEED_TAG", "seeded_run", "split_run", "with_seed"]
