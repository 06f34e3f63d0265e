"""Sentence-BERT caption embeddings on Ray Data: chunks of captions through a pool of encoder actors.

CC3M's ~3 M captions are the one text-side job of CHC that grows with the corpus. On a cluster, the
chunks that :func:`gramlib.chc.encoders.embed_captions` has not finished become the rows of a
``ray.data`` dataset; a pool of actors (``compute.unit`` resources each: a GPU or a fraction of one
on the paper profile) loads the encoder once and embeds a chunk per call; the driver writes each chunk
as it arrives, so a killed job resumes with the chunks it had not written. Every chunk is encoded
exactly as the in-process path encodes it (same batches, same normalisation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .encoders import ChunkEncoder, encode_chunk

__all__ = ["ray_chunk_encoder"]


class _SentenceActor:
    """An actor of the pool: the sentence encoder, loaded once (offline), embedding one chunk per row."""

    def __init__(self, name: str, device: str, batch_size: int, normalize: bool):
        from .encoders import load_sentence_encoder

        self.encoder = load_sentence_encoder(name, device)
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"chunk": row["chunk"], "embeddings": encode_chunk(self.encoder, list(row["captions"]),
                                                                  self.batch_size, self.normalize)}


def ray_chunk_encoder(name: str, compute: Any, batch_size: int = 128, normalize: bool = True) -> ChunkEncoder:
    """A chunk runner for :func:`~gramlib.chc.encoders.embed_captions` on the cluster of ``compute``
    (a :class:`gramlib.compute.ComputeConfig`: local cluster of ``num_cpus``, or ``address``)."""

    def run(chunks: list[tuple[int, list[str]]]) -> Iterator[tuple[int, np.ndarray]]:
        from gramlib.compute import ray_session
        from gramlib.data.shard_features import actor_pool

        if not chunks:
            return
        unit = compute.unit
        with ray_session(compute) as ray:
            ray.data.DataContext.get_current().enable_progress_bars = False
            n_actors, extra, device = actor_pool(ray.cluster_resources(), unit)
            n_actors = min(n_actors, len(chunks))
            # one block a chunk, made in the driver (no read tasks competing with the actors for CPUs)
            ds = ray.data.from_items([{"chunk": i, "captions": c} for i, c in chunks], override_num_blocks=len(chunks))
            ds = ds.map(_SentenceActor, fn_constructor_args=(name, device, batch_size, normalize),
                        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=unit.cpus, **extra)
            for row in ds.iter_rows():
                yield int(row["chunk"]), np.asarray(row["embeddings"], dtype=np.float32)

    return run
