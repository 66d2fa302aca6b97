"""Batches sliced straight from in-memory tensors: no per-sample Python, no worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


class TensorBatchLoader:
    """Iterates over ``(images[idx], labels[idx])`` batches of in-memory tensors.

    The order of an epoch depends only on ``(seed, epoch_fn())``, so a resumed run sees the
    same batches as an uninterrupted one. Under DDP each rank takes every ``world_size``-th batch of
    the same permutation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch_fn = epoch_fn or (lambda: 0)

    def _batch_starts(self) -> range:
        n = len(self.labels)
        stop = n - self.batch_size + 1 if self.drop_last else n
        return range(self.rank * self.batch_size, max(stop, 0), self.batch_size * self.world_size)

    def __len__(self) -> int:
        return len(self._batch_starts())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch_fn())
            order = torch.randperm(len(self.labels), generator=generator)
        else:
            order = None
        for start in self._batch_starts():
            if order is None:
                yield self.images[start : start + self.batch_size], self.labels[
                    start : start + self.batch_size
                ]
            else:
                idx = order[start : start + self.batch_size]
                yield self.images[idx], self.labels[idx]
