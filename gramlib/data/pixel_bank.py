"""Transformed pixels gathered per step from lazily decoded images, under a memory budget.

Image-side meta-learners (VPT+GRAM, UNIGRAM) index a few hundred items per outer step out of a
corpus of millions: one float32 tensor of every item (the obvious bank) would take ~1.5 TB for
CC3M at 224 pixels, or ~770 GB for ImageNet's training set.  A :class:`PixelBank` decodes and
transforms the items a step asks for and keeps them until ``cache_bytes`` is reached, dropping the
least recently used beyond it.  The eval transform is deterministic, so a bank that streams gives
the same tensors as one that holds everything (tested), and a corpus that fits the budget (mini's
15 k pairs at 32 pixels: 184 MB) is decoded once, as before.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

DEFAULT_CACHE_BYTES = 1 << 30  # 1 GiB of transformed pixels per process


class PixelBank:
    """``bank[idx]`` -> ``(len(idx), C, H, W)`` float tensor of ``transform(images[i])``.

    ``images`` is any sequence of PIL images or image paths (e.g. :class:`gramlib.data.corpus.ShardImages`);
    indexing takes a tensor, array or list of positions, as a tensor bank does.
    """

    def __init__(self, images: Sequence[Any], transform: Callable, cache_bytes: int = DEFAULT_CACHE_BYTES):
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.images, self.transform, self.cache_bytes = images, transform, int(cache_bytes)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self._held = 0
        self.decoded = 0  # items decoded and transformed so far (cache misses)
        first = self._load([0])[0] if len(images) else torch.zeros(3, 1, 1)
        self._item_shape = tuple(first.shape)
        self.dtype = first.dtype
        if len(images):
            self._keep(0, first)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._item_shape)

    def _load(self, positions: list[int]) -> list[Tensor]:
        from gramlib.data.transforms import load_image

        ims = self.images[positions] if hasattr(self.images, "take") else [self.images[i] for i in positions]
        self.decoded += len(positions)
        return [self.transform(load_image(im) if isinstance(im, (str, os.PathLike)) else im) for im in ims]

    def _keep(self, i: int, x: Tensor) -> None:
        size = x.numel() * x.element_size()
        if size > self.cache_bytes:
            return
        self._cache[i] = x
        self._held += size
        while self._held > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._held -= old.numel() * old.element_size()

    def __getitem__(self, idx: Tensor | Sequence[int]) -> Tensor:
        pos = [int(i) for i in (idx.tolist() if isinstance(idx, Tensor) else idx)]
        n = len(self)
        if any(not 0 <= i < n for i in pos):
            raise IndexError(f"PixelBank: position out of range 0..{n - 1}")
        got: dict[int, Tensor] = {}
        for i in pos:
            if i in self._cache:
                self._cache.move_to_end(i)
                got[i] = self._cache[i]
        missing = sorted(set(pos) - set(got))
        if missing:
            for i, x in zip(missing, self._load(missing)):
                got[i] = x
                self._keep(i, x)
        if not pos:
            return torch.zeros(0, *self._item_shape, dtype=self.dtype)
        return torch.stack([got[i] for i in pos])

    @property
    def held_bytes(self) -> int:
        return self._held


__all__ = ["DEFAULT_CACHE_BYTES", "PixelBank"]
