"""CC3M-like image-text corpora as webdataset tar shards in img2dataset's output layout.

Layout (what ``img2dataset --output_format webdataset`` writes)::

    out_dir/00000.tar          members <key>.jpg, <key>.json, <key>.txt per sample
    out_dir/00000_stats.json   count, successes, failed_to_download, ..., status_dict
    out_dir/00001.tar ...

Keys default to img2dataset's ``<shard id, 5 digits><index in shard, 4 digits>``.

Why plain :mod:`tarfile` rather than the ``webdataset`` package (the shards stay readable by
``webdataset.WebDataset``, which the tests check):

* writing: webdataset's ``TarWriter`` stamps every member with the current time, so identical
  corpora would give different bytes; we fix mtime/owner so shards are byte-stable (DVC-friendly);
* reading: an error must name the shard *and* the sample key, and ``on_corrupt="skip"`` must count
  what it dropped. webdataset's handlers see a decoded sample without its shard and would need
  wrapper pipelines for both; a 60-line loop over ``tarfile`` is simpler and deterministic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from gramlib.io import atomic_path, write_json

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_RE = re.compile(r"^(\d+)\.tar$")
ON_EMPTY = ("skip", "raise")
ON_CORRUPT = ("raise", "skip")


@dataclass
class ShardSample:
    """One image-text pair as img2dataset stores it; ``key=None`` gets img2dataset's key."""

    key: str | None
    jpg: bytes
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadStats:
    """What a read saw and what it dropped (``skipped`` holds ``(shard, key, reason)``)."""

    shards: int = 0
    samples: int = 0
    empty_shards: list[str] = field(default_factory=list)
    skipped_corrupt_image: int = 0
    skipped_bad_caption: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return self.skipped_corrupt_image + self.skipped_bad_caption


# --------------------------------------------------------------------------------------------
# Writing


def _as_sample(s: ShardSample | Mapping[str, Any]) -> ShardSample:
    if isinstance(s, ShardSample):
        return s
    caption = s.get("caption", s.get("txt"))
    return ShardSample(s.get("key"), s["jpg"], caption, dict(s.get("json", s.get("meta")) or {}))


def _check_key(key: str) -> None:
    # webdataset groups members by the basename up to its first dot: a dot or a slash in a key
    # would split one sample into several.
    if not isinstance(key, str) or not key or "." in key or "/" in key or "\\" in key:
        raise ValueError(f"sample key must be a non-empty string without '.', '/' or '\\', got {key!r}")


def _image_size(data: bytes, key: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"sample {key!r}: image bytes are not a readable image ({exc})") from exc


def _meta_for(sample: ShardSample, key: str, validate: bool) -> dict[str, Any]:
    """img2dataset's per-sample JSON fields, completed from the image where not given."""
    if validate or "width" not in sample.meta or "height" not in sample.meta:
        try:
            w, h = _image_size(sample.jpg, key)
        except ValueError:
            if validate:
                raise
            w = h = None
    else:
        w, h = sample.meta["width"], sample.meta["height"]
    meta: dict[str, Any] = {
        "url": None, "key": key, "status": "success", "error_message": None,
        "width": w, "height": h, "original_width": w, "original_height": h,
        "exif": None, "sha256": hashlib.sha256(sample.jpg).hexdigest(), "caption": sample.caption,
    }
    meta.update(sample.meta)
    if meta["key"] != key:
        raise ValueError(f"sample {key!r}: json 'key' is {meta['key']!r}")
    return meta


def _add_member(tf: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o444
    info.uname = info.gname = ""
    info.uid = info.gid = 0
    tf.addfile(info, io.BytesIO(data))


def shard_name(shard_id: int, digits: int = 5) -> str:
    return f"{shard_id:0{digits}d}.tar"


def _existing_shards(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("*.tar") if SHARD_RE.match(p.name)) if out_dir.is_dir() else []


def write_shards(samples: Iterable[ShardSample | Mapping[str, Any]], out_dir: str | os.PathLike,
                 shard_size: int, *, start_shard: int = 0, validate: bool = True,
                 overwrite: bool = False, mtime: float = 0.0) -> list[Path]:
    """Write ``samples`` (streamed) as ``00000.tar``, ``00001.tar``, ... plus ``*_stats.json``.

    Each shard is written to a temporary file and moved into place; its stats file is written
    after it, so a stats file implies a complete shard. ``validate`` checks each image header and
    caption (turn it off only to build deliberately broken test shards). Shards already in
    ``out_dir`` raise unless ``overwrite=True``, in which case stale numbered shards beyond the
    new ones are removed (a directory reader would otherwise mix two corpora).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    old = _existing_shards(out_dir)
    if old and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds {len(old)} shard(s); pass overwrite=True")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    batch: list[ShardSample] = []

    def flush() -> None:
        shard_id = start_shard + len(written)
        path = out_dir / shard_name(shard_id)
        with atomic_path(path) as tmp:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
                for i, s in enumerate(batch):
                    key = s.key if s.key is not None else f"{shard_id:05d}{i:04d}"
                    _check_key(key)
                    if key in seen:
                        raise ValueError(f"duplicate sample key {key!r} (shard {path.name})")
                    seen.add(key)
                    if not isinstance(s.caption, str) or (validate and not s.caption.strip()):
                        raise ValueError(f"sample {key!r}: caption must be non-empty text, got {s.caption!r}")
                    if not isinstance(s.jpg, (bytes, bytearray)):
                        raise TypeError(f"sample {key!r}: jpg must be bytes, got {type(s.jpg).__name__}")
                    meta = _meta_for(s, key, validate)
                    members = {"jpg": bytes(s.jpg), "json": json.dumps(meta, sort_keys=True).encode(),
                               "txt": s.caption.encode("utf-8")}
                    for ext in sorted(members):
                        _add_member(tf, f"{key}.{ext}", members[ext], mtime)
        n = len(batch)
        write_json(out_dir / f"{shard_id:05d}_stats.json", {
            "count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
            "duration": 0.0, "start_time": mtime, "end_time": mtime, "status_dict": {"success": n},
        })
        written.append(path)
        batch.clear()

    for s in samples:
        batch.append(_as_sample(s))
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    if overwrite:
        keep = {p.name for p in written}
        for p in old:
            if p.name not in keep:
                p.unlink()
                stats = p.with_name(f"{p.stem}_stats.json")
                if stats.exists():
                    stats.unlink()
    return written


# --------------------------------------------------------------------------------------------
# Reading


def list_shards(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A directory -> its ``*.tar`` files sorted by name; a path or list of paths -> as given."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        p = Path(paths_or_dir)
        if p.is_dir():
            shards = sorted(p.glob("*.tar"))
            if not shards:
                raise FileNotFoundError(f"{p}: no .tar shards")
            return shards
        paths = [p]
    else:
        paths = [Path(x) for x in paths_or_dir]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"shard not found: {p}")
    return paths


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: key = path up to the first dot of the basename, ext = the rest."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _iter_raw(shard: Path, exts: set[str] | None
              ) -> Iterator[tuple[str, dict[str, bytes], dict[str, tuple[int, int]]]]:
    """(key, {ext: bytes}, {ext: (offset, size)}) per sample, members grouped by consecutive key as
    webdataset does; the spans locate each member's bytes in the (uncompressed) tar file.

    ``exts`` limits which members are read (the others are seeked over, which keeps
    :func:`read_captions` from touching image bytes).
    """
    if shard.stat().st_size == 0:
        return
    try:
        with tarfile.open(shard, "r:") as tf:
            key: str | None = None
            group: dict[str, bytes] = {}
            spans: dict[str, tuple[int, int]] = {}
            seen: set[str] = set()
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = _split_member(m.name)
                if k != key:
                    if key is not None:
                        yield key, group, spans
                    if k in seen:
                        raise ValueError(f"{shard}: members of sample {k!r} are not contiguous")
                    seen.add(k)
                    key, group, spans = k, {}, {}
                spans[ext] = (m.offset_data, m.size)
                if exts is None or ext in exts:
                    fh = tf.extractfile(m)
                    group[ext] = fh.read() if fh is not None else b""
                else:
                    group.setdefault(ext, b"")  # record presence only
            if key is not None:
                yield key, group, spans
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{shard}: corrupt or truncated tar ({exc})") from exc


def _caption(group: Mapping[str, bytes]) -> str | None:
    raw = group.get("txt")
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() and "\x00" not in text else None


def _reject(shard: Path, key: str, reason: str, kind: str, on_corrupt: str, stats: ReadStats) -> None:
    if on_corrupt == "raise":
        raise ValueError(f"{shard}: sample {key!r}: {reason}")
    stats.skipped.append((shard.name, key, reason))
    if kind == "image":
        stats.skipped_corrupt_image += 1
    else:
        stats.skipped_bad_caption += 1


def _empty(shard: Path, on_empty: str, stats: ReadStats) -> None:
    if on_empty == "raise":
        raise ValueError(f"{shard}: empty shard (no samples)")
    stats.empty_shards.append(shard.name)
    log.warning("skipping empty shard %s", shard)


@dataclass(frozen=True)
class ImageSpan:
    """Where a sample's image bytes lie: ``size`` bytes at ``offset`` of the tar file ``shard``.

    A corpus of millions of pairs is held as its spans and decoded per batch (:class:`gramlib.data.corpus.ShardImages`).
    """

    shard: str
    offset: int
    size: int


def decode_image(data: bytes) -> Image.Image:
    """Fully decoded RGB image (``load`` first, so a truncated file fails here, not later)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def _log_summary(stats: ReadStats) -> None:
    if stats.skipped_total or stats.empty_shards:
        log.warning("read %d samples from %d shards; skipped %d corrupt image(s), %d bad caption(s), "
                    "%d empty shard(s)", stats.samples, stats.shards, stats.skipped_corrupt_image,
                    stats.skipped_bad_caption, len(stats.empty_shards))


def iter_shards(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], decode: bool = True, *,
                on_empty: str = "skip", on_corrupt: str = "raise", stats: ReadStats | None = None,
                spans: bool = False) -> Iterator[tuple[str, Image.Image | bytes | ImageSpan, str, dict]]:
    """Yield ``(key, image, caption, meta)`` in shard order, then tar order.

    ``decode=True`` gives a fully decoded RGB ``PIL.Image`` (so a corrupt image is caught here);
    ``decode=False`` gives the raw bytes and does not check them. ``spans=True`` yields the image's
    :class:`ImageSpan` instead (checked by decoding when ``decode``, then released: memory stays one
    sample's, whatever the corpus). A sample whose image is missing
    or undecodable, or whose caption is missing, empty or not UTF-8 text, raises a ValueError
    naming shard and key, or with ``on_corrupt="skip"`` is dropped and counted in ``stats`` (pass
    your own :class:`ReadStats` to read the counts). Empty shards are skipped with a warning or
    raise (``on_empty``). A structurally broken tar always raises.
    """
    _check_choice("on_empty", on_empty, ON_EMPTY)
    _check_choice("on_corrupt", on_corrupt, ON_CORRUPT)
    stats = ReadStats() if stats is None else stats
    for shard in list_shards(paths_or_dir):
        stats.shards += 1
        n = 0
        for key, group, where in _iter_raw(shard, None):
            n += 1
            ext = next((e for e in IMAGE_EXTS if e in group), None)
            if ext is None:
                _reject(shard, key, "no image member", "image", on_corrupt, stats)
                continue
            caption = _caption(group)
            if caption is None:
                _reject(shard, key, "caption missing, empty or not UTF-8 text", "caption", on_corrupt, stats)
                continue
            image: Image.Image | bytes | ImageSpan = group[ext]
            if decode:
                try:
                    image = decode_image(group[ext])
                except DECODE_ERRORS as exc:
                    _reject(shard, key, f"corrupt image .{ext} ({exc})", "image", on_corrupt, stats)
                    continue
            if spans:
                image = ImageSpan(str(shard.resolve()), *where[ext])  # absolute: notebooks run elsewhere
            try:
                meta = json.loads(group["json"]) if "json" in group else {}
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{shard}: sample {key!r}: malformed .json ({exc})") from exc
            stats.samples += 1
            yield key, image, caption, meta
        if n == 0:
            _empty(shard, on_empty, stats)
    _log_summary(stats)


def read_shards(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], decode: bool = True, *,
                on_empty: str = "skip", on_corrupt: str = "raise") -> tuple[list[tuple], ReadStats]:
    """:func:`iter_shards` into a list, with its :class:`ReadStats` returned beside it."""
    stats = ReadStats()
    rows = list(iter_shards(paths_or_dir, decode, on_empty=on_empty, on_corrupt=on_corrupt, stats=stats))
    return rows, stats


def read_captions(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], *,
                  on_empty: str = "skip", on_corrupt: str = "raise",
                  stats: ReadStats | None = None):
    """``pandas.DataFrame[key, caption, shard]`` without reading image bytes (CHC only needs text).

    Captions are checked as in :func:`iter_shards`; images are only checked for presence.
    """
    import pandas as pd

    _check_choice("on_empty", on_empty, ON_EMPTY)
    _check_choice("on_corrupt", on_corrupt, ON_CORRUPT)
    stats = ReadStats() if stats is None else stats
    rows: list[tuple[str, str, str]] = []
    for shard in list_shards(paths_or_dir):
        stats.shards += 1
        n = 0
        for key, group, _ in _iter_raw(shard, {"txt"}):
            n += 1
            if not any(e in group for e in IMAGE_EXTS):
                _reject(shard, key, "no image member", "image", on_corrupt, stats)
                continue
            caption = _caption(group)
            if caption is None:
                _reject(shard, key, "caption missing, empty or not UTF-8 text", "caption", on_corrupt, stats)
                continue
            stats.samples += 1
            rows.append((key, caption, shard.name))
        if n == 0:
            _empty(shard, on_empty, stats)
    _log_summary(stats)
    return pd.DataFrame(rows, columns=["key", "caption", "shard"])
