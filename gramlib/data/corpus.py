"""The CC3M(-like) corpus: every readable pair of a profile's webdataset shards, in shard order.

CHC (§3.2) clusters it and meta-training (§3.3) draws its tasks from it; both read it through
:func:`load_corpus_shared` (read once per process) and key its image features by
:func:`corpus_identity`, so the two stages share one feature-cache entry.

Images are held as where they lie in the shards (:class:`ShardImages`) and decoded when a batch asks
for them: CC3M's 2.5 M decoded images would take ~376 GB of RAM, their spans take ~40 MB.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ShardImages(Sequence):
    """A sequence of images stored in tar shards, decoded (RGB) only when indexed.

    ``images[i]`` is a PIL image; a slice or a list of positions gives a list (one file handle per
    shard per call); :meth:`take` gives a lazy subset.  Holds paths and integer arrays only, so it
    pickles cheaply and its memory does not grow with the images' size.
    """

    def __init__(self, shards: Sequence[str], shard_ix: np.ndarray, offsets: np.ndarray, sizes: np.ndarray):
        self.shards = [str(s) for s in shards]
        self.shard_ix = np.asarray(shard_ix, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if not len(self.shard_ix) == len(self.offsets) == len(self.sizes):
            raise ValueError("ShardImages: shard_ix, offsets and sizes differ in length")

    @classmethod
    def from_spans(cls, spans: Sequence[Any]) -> ShardImages:
        """From :class:`gramlib.data.cc3m.ImageSpan` s, in order."""
        shards: dict[str, int] = {}
        ix = [shards.setdefault(s.shard, len(shards)) for s in spans]
        return cls(list(shards), np.array(ix), np.array([s.offset for s in spans]), np.array([s.size for s in spans]))

    def __len__(self) -> int:
        return len(self.offsets)

    def take(self, positions: Sequence[int] | np.ndarray) -> ShardImages:
        """The images at ``positions``, still undecoded."""
        pos = np.asarray(positions, dtype=np.int64)
        return ShardImages(self.shards, self.shard_ix[pos], self.offsets[pos], self.sizes[pos])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._read(range(len(self))[i])
        if isinstance(i, (int, np.integer)):
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"image {i} out of range ({n} images)")
            return self._read([int(i) % n])[0]
        return self._read([int(j) for j in i])

    def _read(self, positions: Sequence[int]) -> list[Any]:
        from gramlib.data.cc3m import DECODE_ERRORS, decode_image

        out, handles = [], {}
        try:
            for i in positions:
                s = int(self.shard_ix[i])
                fh = handles.get(s) or handles.setdefault(s, open(self.shards[s], "rb"))
                fh.seek(int(self.offsets[i]))
                data = fh.read(int(self.sizes[i]))
                try:
                    out.append(decode_image(data))
                except DECODE_ERRORS as exc:  # the shard changed since it was read
                    raise ValueError(f"{self.shards[s]}: image at byte {int(self.offsets[i])} no longer decodes "
                                     f"({exc}); the shard was rewritten after the corpus was read") from exc
        finally:
            for fh in handles.values():
                fh.close()
        return out


@dataclass
class Corpus:
    """The readable pairs of a profile's CC3M-like shards, in shard order, and what was skipped."""

    keys: list[str]
    captions: list[str]
    images: Sequence[Any]  # RGB PIL images on access (ShardImages: decoded per batch, never all at once)
    shards: list[str]
    read_stats: dict[str, Any]
    _position: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.keys)

    def image_of(self, key: str) -> Any:
        """The decoded image of the pair ``key``."""
        if self._position is None:
            self._position = {k: i for i, k in enumerate(self.keys)}
        return self.images[self._position[key]]


def load_corpus(shard_dir: str | os.PathLike, on_corrupt: str = "skip") -> Corpus:
    """Read every shard (each image decoded once to check it, so a corrupt one is caught here, not
    inside the backbone, then released: the corpus keeps where it lies, :class:`ShardImages`).

    Empty shards are skipped with a warning; corrupt samples (bad image, empty / non-UTF-8 caption)
    are skipped (``on_corrupt="skip"``) or raise; both are counted in ``read_stats``.  No shard, or
    no readable pair at all, raises.
    """
    from gramlib.data.cc3m import ReadStats, iter_shards, list_shards

    shards = list_shards(shard_dir)
    if not shards:
        raise FileNotFoundError(f"no webdataset shards (*.tar) under {shard_dir}")
    stats = ReadStats()
    keys, caps, spans = [], [], []
    for key, span, caption, _meta in iter_shards(shards, decode=True, on_empty="skip", on_corrupt=on_corrupt,
                                                  stats=stats, spans=True):
        keys.append(key)
        caps.append(caption)
        spans.append(span)
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
    return Corpus(keys=keys, captions=caps, images=ShardImages.from_spans(spans), shards=[str(p) for p in shards],
                  read_stats=rs)


_CORPUS_MEMO: dict[tuple, Corpus] = {}


def load_corpus_shared(shard_dir: str | os.PathLike) -> Corpus:
    """:func:`load_corpus`, read once per process while the shards are unchanged (READ-ONLY result).

    Every meta-training run reads the same 15 k mini pairs (~7 s of JPEG checking); the runs of a
    ``meta_runs`` worker share one read. Keyed by the shards' path, size and mtime, so a
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
