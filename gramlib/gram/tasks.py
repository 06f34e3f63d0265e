"""Meta-training task generation (paper §3.3, "Automatic Meta-Training Task Generation").

A K_t-way task samples K_t CHC topics (class label = the topic word); per class the **support**
set comes from ONE visual domain of the topic and the **query** set is drawn uniformly over ALL
the topic's domains, which simulates the train/test domain shift that R^phi must learn to
bridge (§3.4).  ``domain_shift=False`` draws the support uniformly over domains too (Table 6,
row 1).  A labelled dataset can stand in for CHC (Table 6, row 4: "tasks by sub-sampling the set
of classes"); its classes have one domain each unless the data says otherwise.

Everything is index arithmetic over a :class:`TaskPool` built once from the pairs table; a task
holds row positions into the item list the pool was built from (e.g. a cached feature bank), so
sampling costs microseconds and is reproducible from a ``numpy.random.Generator``.

Reproduction notes (choices the paper leaves open):

* "Uniformly over all domains" is read as *balanced* over domains: query images are dealt
  round-robin over the class's domains (random domain order), so every domain with images left is
  represented once the query size reaches the number of domains; a domain that runs dry is skipped.
* Support and query are disjoint.  The support domain is drawn uniformly among the topic's
  domains that hold at least ``shots`` images and leave ``query`` images for the query.
* Topics sharing a topic word would be indistinguishable classes: a task never holds two topics
  with the same word.
* Topics too small for ``shots + query`` images are skipped (counted and logged when the pool is
  built); if fewer usable topics than ``ways`` remain, building the pool raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("key", "kept", "topic_id", "topic_word", "domain_id")


@dataclass(frozen=True)
class TaskConfig:
    """Shape of one meta-training task: K_t ways, support shots and query size per class."""

    ways: int = 5  # K_t
    shots: int = 5  # support images per class
    query: int = 10  # query images per class
    domain_shift: bool = True  # support from one domain per class (False: Table 6 row 1)

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "query"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TaskConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.ways < 2:
            raise ValueError(f"a classification task needs at least 2 ways, got {self.ways}")


@dataclass(frozen=True)
class TaskPool:
    """Per class, per domain: the item positions available for tasks (built once, sampled often).

    ``members[c][u]`` are positions (into the item list the pool was built from) of class c in its
    u-th domain; ``domain_ids[c][u]`` is that domain's id in the source table.
    """

    classnames: tuple[str, ...]
    class_ids: tuple[int, ...]  # topic id (CHC) or label (labelled dataset) of each class
    members: tuple[tuple[np.ndarray, ...], ...]
    domain_ids: tuple[tuple[int, ...], ...]
    cfg: TaskConfig
    skipped: dict[str, int] = field(default_factory=dict)  # why topics were left out -> count

    def __len__(self) -> int:
        return len(self.classnames)

    def class_size(self, c: int) -> int:
        return int(sum(len(m) for m in self.members[c]))


@dataclass(frozen=True)
class Task:
    """One K_t-way task: positions and labels (0..K_t-1, class-major) of its support and query sets."""

    classnames: tuple[str, ...]  # topic word of each way, label order
    classes: np.ndarray  # (K,) pool class index of each way
    support_idx: np.ndarray  # (K*shots,) item positions
    support_y: np.ndarray  # (K*shots,)
    query_idx: np.ndarray  # (K*query,)
    query_y: np.ndarray  # (K*query,)
    support_domain: np.ndarray  # (K,) the single support domain id per class (-1: uniform support)
    support_dom: np.ndarray  # (K*shots,) domain id of each support item
    query_dom: np.ndarray  # (K*query,) domain id of each query item


# ----------------------------------------------------------------------------------------------
# pools


def _usable(sizes: Sequence[int], cfg: TaskConfig) -> str | None:
    """Why a class with these domain sizes cannot give a task (None when it can)."""
    total = int(sum(sizes))
    if total < cfg.shots + cfg.query:
        return "fewer images than shots+query"
    if cfg.domain_shift and not any(s >= cfg.shots for s in sizes):
        return "no domain with shots images"
    return None


def _finish_pool(names: list[str], ids: list[int], members: list[list[np.ndarray]], doms: list[list[int]],
                 cfg: TaskConfig, source: str) -> TaskPool:
    keep_n, keep_i, keep_m, keep_d = [], [], [], []
    skipped: dict[str, int] = {}
    seen_words: set[str] = set()
    for name, cid, mem, dom in zip(names, ids, members, doms):
        why = _usable([len(m) for m in mem], cfg)
        if why is not None:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        keep_n.append(name)
        keep_i.append(int(cid))
        keep_m.append(tuple(np.asarray(m, dtype=np.int64) for m in mem))
        keep_d.append(tuple(int(d) for d in dom))
        seen_words.add(name)
    if skipped:
        log.warning("%s: skipped %d of %d classes for %d-shot/%d-query tasks: %s", source,
                    sum(skipped.values()), len(names), cfg.shots, cfg.query, skipped)
    n_words = len(seen_words)
    if n_words == 0:
        raise ValueError(f"{source}: no class has enough images for {cfg.shots}-shot tasks with {cfg.query} "
                         f"queries per class (skipped: {skipped or 'no classes at all'})")
    if cfg.ways > n_words:
        raise ValueError(f"{source}: {cfg.ways}-way tasks need {cfg.ways} usable classes with distinct names, "
                         f"but only {n_words} remain (of {len(names)}; skipped: {skipped})")
    return TaskPool(tuple(keep_n), tuple(keep_i), tuple(keep_m), tuple(keep_d), cfg, skipped)


def pool_from_pairs(pairs: pd.DataFrame, cfg: TaskConfig, *, source: str = "CHC pairs") -> TaskPool:
    """Pool of CHC topics: kept pairs with a topic (topic_id >= 0), grouped by topic then domain.

    Positions are row positions of ``pairs`` (0..len-1), so an item bank aligned with the table
    (same row order) is indexed directly.
    """
    missing = [c for c in ("kept", "topic_id", "topic_word", "domain_id") if c not in pairs.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {list(PAIR_COLUMNS)}")
    pos = np.arange(len(pairs))
    ok = pairs["kept"].to_numpy(bool) & (pairs["topic_id"].to_numpy() >= 0)
    if not ok.any():
        raise ValueError(f"{source}: no kept pair with a topic (topic_id >= 0) among {len(pairs)} rows")
    sub = pd.DataFrame({"pos": pos[ok], "topic": pairs["topic_id"].to_numpy()[ok],
                        "word": pairs["topic_word"].astype(str).to_numpy()[ok],
                        "domain": pairs["domain_id"].to_numpy()[ok]})
    names, ids, members, doms = [], [], [], []
    for topic, g in sub.groupby("topic", sort=True):
        words = g["word"].unique()
        if len(words) != 1:
            raise ValueError(f"{source}: topic {topic} has several topic words {list(words)[:3]}")
        names.append(str(words[0]))
        ids.append(int(topic))
        by_dom = sorted(g.groupby("domain", sort=True), key=lambda kv: kv[0])
        members.append([d["pos"].to_numpy() for _, d in by_dom])
        doms.append([int(k) for k, _ in by_dom])
    return _finish_pool(names, ids, members, doms, cfg, source)


def pool_from_labels(labels: Sequence[int], classnames: Sequence[str], cfg: TaskConfig,
                     domains: Sequence[Any] | None = None, *, source: str = "labelled dataset") -> TaskPool:
    """Pool of a labelled dataset (supervised meta-learning, Table 6 row 4): classes are the labels.

    Without ``domains`` every class is one domain, so support and query are both uniform.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if domains is None:
        dom_codes = np.zeros(len(labels), dtype=np.int64)
    else:
        dom_codes = pd.factorize(pd.Series([str(d) for d in domains]), sort=True)[0].astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classnames)):
        raise ValueError(f"{source}: labels outside 0..{len(classnames) - 1}")
    names, ids, members, doms = [], [], [], []
    for c in range(len(classnames)):
        pos = np.flatnonzero(labels == c)
        u = np.unique(dom_codes[pos])
        names.append(str(classnames[c]).replace("_", " "))
        ids.append(c)
        members.append([pos[dom_codes[pos] == d] for d in u])
        doms.append([int(d) for d in u])
    return _finish_pool(names, ids, members, doms, cfg, source)


def pool_from_dataset(dataset: Any, cfg: TaskConfig, split: str = "train") -> TaskPool:
    """Pool of a :class:`gramlib.data.coop.CoopDataset` split (positions index ``dataset.split(split)``)."""
    data = dataset.split(split)
    domains = [d.domain for d in data] if any(d.domain is not None for d in data) else None
    return pool_from_labels([d.label for d in data], dataset.classnames, cfg, domains,
                            source=f"{dataset.name}/{split}")


# ----------------------------------------------------------------------------------------------
# sampling


def _balanced(groups: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n items without replacement dealt round-robin over the groups (random order within and across).

    Returns (items, group index of each item).
    """
    shuffled = [g[rng.permutation(len(g))] for g in groups]
    order = rng.permutation(len(groups))
    taken = [0] * len(groups)
    items, which = [], []
    while len(items) < n:
        progressed = False
        for gi in order:
            if len(items) == n:
                break
            if taken[gi] < len(shuffled[gi]):
                items.append(shuffled[gi][taken[gi]])
                which.append(gi)
                taken[gi] += 1
                progressed = True
        if not progressed:
            raise ValueError(f"only {sum(len(g) for g in groups)} items for {n} draws")
    return np.asarray(items, dtype=np.int64), np.asarray(which, dtype=np.int64)


def _sample_class(pool: TaskPool, c: int, cfg: TaskConfig, rng: np.random.Generator):
    mem, dom = pool.members[c], np.asarray(pool.domain_ids[c])
    if cfg.domain_shift:
        ok = [u for u, m in enumerate(mem) if len(m) >= cfg.shots]
        u = ok[int(rng.integers(len(ok)))]  # the single support domain of this class
        sup = mem[u][rng.choice(len(mem[u]), cfg.shots, replace=False)]
        sup_dom = np.full(cfg.shots, dom[u])
        support_domain = int(dom[u])
    else:
        sup, which = _balanced(mem, cfg.shots, rng)
        sup_dom = dom[which]
        support_domain = -1
    rest = [np.setdiff1d(m, sup, assume_unique=True) for m in mem]
    rest_dom = [d for d, m in zip(dom, rest) if len(m)]
    rest = [m for m in rest if len(m)]
    qry, which = _balanced(rest, cfg.query, rng)  # uniform over ALL domains of the class
    return sup, sup_dom, qry, np.asarray(rest_dom)[which], support_domain


def split_topics(pool: TaskPool, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(meta-training classes, held-out classes) of ``pool``: a seeded ``fraction`` of its distinct
    topic *words* is held out, with every class that carries one of them, so no held-out word is
    ever a class of a meta-training task. Held-out tasks measure what meta-training learned about
    tasks in general (issue 15: the regulator's effect), not about its own topics."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"meta.heldout_topics must be in [0, 1), got {fraction}")
    words = sorted(set(pool.classnames))
    n_out = int(round(fraction * len(words)))
    if n_out == 0:
        return np.arange(len(pool)), np.zeros(0, dtype=np.int64)
    ways = pool.cfg.ways
    if n_out < ways or len(words) - n_out < ways:
        raise ValueError(f"meta.heldout_topics={fraction}: {n_out} of {len(words)} topic words held out, but both "
                         f"parts need at least tasks.ways={ways} words")
    out_words = {words[i] for i in np.random.default_rng(seed).permutation(len(words))[:n_out]}
    held = np.asarray([c for c in range(len(pool)) if pool.classnames[c] in out_words], dtype=np.int64)
    train = np.asarray([c for c in range(len(pool)) if pool.classnames[c] not in out_words], dtype=np.int64)
    return train, held


def sample_task(pool: TaskPool | pd.DataFrame, rng: np.random.Generator | int, cfg: TaskConfig | None = None,
                classes: Sequence[int] | np.ndarray | None = None) -> Task:
    """One K_t-way task (§3.3): K_t topics with distinct words; support from one domain per class
    (``cfg.domain_shift``) or uniform, query uniform over all domains; disjoint; class-major order.

    ``pool`` may be the pairs table itself (a pool is then built, which validates it); ``rng`` a
    seed or a numpy Generator (advanced in place, so consecutive calls give different tasks);
    ``classes`` restricts the draw to these pool classes (:func:`split_topics`).
    """
    if isinstance(pool, pd.DataFrame):
        if cfg is None:
            raise ValueError("give a TaskConfig when sampling from a pairs table")
        pool = pool_from_pairs(pool, cfg)
    if cfg is not None and cfg != pool.cfg:
        raise ValueError(f"the pool was built for {pool.cfg}; rebuild it for {cfg}")
    cfg = pool.cfg
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    # distinct topic words: walk a random permutation and keep the first class of each word
    chosen: list[int] = []
    words: set[str] = set()
    candidates = rng.permutation(len(pool)) if classes is None else np.asarray(classes)[rng.permutation(len(classes))]
    for c in candidates:
        if pool.classnames[c] not in words:
            chosen.append(int(c))
            words.add(pool.classnames[c])
            if len(chosen) == cfg.ways:
                break
    if len(chosen) < cfg.ways:
        raise ValueError(f"{cfg.ways}-way task but the pool has only {len(words)} distinct class names")
    parts = [_sample_class(pool, c, cfg, rng) for c in chosen]
    k = np.arange(cfg.ways)
    return Task(
        classnames=tuple(pool.classnames[c] for c in chosen),
        classes=np.asarray(chosen, dtype=np.int64),
        support_idx=np.concatenate([p[0] for p in parts]),
        support_y=np.repeat(k, cfg.shots),
        query_idx=np.concatenate([p[2] for p in parts]),
        query_y=np.repeat(k, cfg.query),
        support_domain=np.asarray([p[4] for p in parts], dtype=np.int64),
        support_dom=np.concatenate([p[1] for p in parts]).astype(np.int64),
        query_dom=np.concatenate([p[3] for p in parts]).astype(np.int64),
    )


def sample_tasks(pool: TaskPool, rng: np.random.Generator, n: int,
                 classes: Sequence[int] | np.ndarray | None = None) -> list[Task]:
    """A meta-batch of ``n`` independent tasks (Algorithm 1, line 3), from ``classes`` when given."""
    return [sample_task(pool, rng, classes=classes) for _ in range(n)]


def truth_pairs(truth: pd.DataFrame, styles_as_domains: bool = True) -> pd.DataFrame:
    """An oracle 'CHC' table from the mini world's ground truth (concept -> topic, style -> domain).

    For tests and the CHC-free ablation; mismatched pairs are dropped like CHC's noise filter would.
    """
    concepts = sorted(truth["concept"].unique())
    styles = sorted(truth["style"].unique())
    topic = truth["concept"].map({c: i for i, c in enumerate(concepts)}).to_numpy()
    domain = truth["style"].map({s: i for i, s in enumerate(styles)}).to_numpy() if styles_as_domains else 0
    kept = ~truth["mismatched"].to_numpy(bool) if "mismatched" in truth else np.ones(len(truth), bool)
    return pd.DataFrame({"key": truth["key"].astype(str), "caption": truth["concept"].str.replace("_", " "),
                         "kept": kept, "topic_id": np.where(kept, topic, -1),
                         "topic_word": truth["concept"].str.replace("_", " "), "domain_id": domain})


__all__ = ["Task", "TaskConfig", "TaskPool", "pool_from_dataset", "pool_from_labels", "pool_from_pairs",
           "sample_task", "sample_tasks", "split_topics", "truth_pairs"]
