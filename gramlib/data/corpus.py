"""The decoded CC3M(-like) corpus: every readable pair of a profile's webdataset shards, in shard order.

CHC (§3.2) clusters it and meta-training (§3.3) draws its tasks from it; both read it through
:func:`load_corpus_shared` (decoded once per process) and key its image features by
:func:`corpus_identity`, so the two stages share one feature-cache entry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """The readable pairs of a profile's CC3M-like shards, in shard order, and what was skipped."""

    keys: list[str]
    captions: list[str]
    images: list[Any]  # PIL images (decoded, RGB)
    shards: list[str]
    read_stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)


def load_corpus(shard_dir: str | os.PathLike, on_corrupt: str = "skip") -> Corpus:
    """Read every shard (images decoded, so a corrupt one is caught here, not inside the backbone).

    Empty shards are skipped with a warning; corrupt samples (bad image, empty / non-UTF-8 caption)
    are skipped (``on_corrupt="skip"``) or raise; both are counted in ``read_stats``.  No shard, or
    no readable pair at all, raises.
    """
    from gramlib.data.cc3m import ReadStats, iter_shards, list_shards

    shards = list_shards(shard_dir)
    if not shards:
        raise FileNotFoundError(f"no webdataset shards (*.tar) under {shard_dir}")
    stats = ReadStats()
    keys, caps, imgs = [], [], []
    for key, image, caption, _meta in iter_shards(shards, decode=True, on_empty="skip", on_corrupt=on_corrupt, stats=stats):
        keys.append(key)
        caps.append(caption)
        imgs.append(image)
    rs = {"shards": stats.shards, "samples": stats.samples,
          "empty_shards": [str(Path(p).name) for p in stats.empty_shards],
          "skipped_corrupt_image": stats.skipped_corrupt_image,
          "skipped_bad_caption": stats.skipped_bad_caption,
          "skipped": [[str(Path(s).name), k, r] for s, k, r in stats.skipped]}
    if not keys:
        raise ValueError(f"{shard_dir}: no readable image-text pair in {len(shards)} shard(s) "
                         f"({len(rs['empty_shards'])} empty, {stats.skipped_total} sample(s) skipped)")
    log.info("CHC corpus: %d pairs from %d shards (%d empty shards, %d skipped samples)", len(keys),
             stats.shards, len(rs["empty_shards"]), stats.skipped_total)
    return Corpus(keys=keys, captions=caps, images=imgs, shards=[str(p) for p in shards], read_stats=rs)


_CORPUS_MEMO: dict[tuple, Corpus] = {}


def load_corpus_shared(shard_dir: str | os.PathLike) -> Corpus:
    """:func:`load_corpus`, decoded once per process while the shards are unchanged (READ-ONLY result).

    Every meta-training run reads the same 15 k mini pairs (~7 s of JPEG decoding); the runs of a
    ``meta_runs`` worker share one decoded copy. Keyed by the shards' path, size and mtime, so a
    rewritten shard is read again.
    """
    from gramlib.data.cc3m import list_shards

    key = (str(Path(shard_dir).resolve()), tuple(map(tuple, shard_identity([str(p) for p in list_shards(shard_dir)]))))
    if key not in _CORPUS_MEMO:
        _CORPUS_MEMO.clear()  # one corpus at a time: a profile's shards, not a growing cache
        _CORPUS_MEMO[key] = load_corpus(shard_dir)
    return _CORPUS_MEMO[key]


def shard_identity(shards: Sequence[str]) -> list:
    """Cache identity of the shards: path, size and mtime (changes whenever a shard is rewritten)."""
    return [[Path(p).name, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in shards]


def corpus_identity(corpus: Corpus) -> list:
    """The feature-cache identity of a corpus's images: CHC and meta-training share one cache entry."""
    return [shard_identity(corpus.shards), corpus.keys]
