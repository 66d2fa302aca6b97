"""Batches sliced straight from in-memory tensors: no per-sample Python, no worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


class TensorBatchLoader:
    """Iterates over ``(images[idx], labels[idx])`` batches of in-memory tensors.

    The order of an epoch depends only on ``(seed, epoch_fn())``, so a resumed run sees the
    same batches as an uninterrupted one. Under DDP each rank takes every ``world_size``-th
    image of the same permutation, like ``DistributedSampler``. The tensors may live on the
    training device (a GPU): the permutation is drawn on the CPU, copied there once per epoch,
    and every batch is gathered on the device without a host round trip.
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
        self._epoch = 0
        self._yielded = 0
        self._resume_at: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """Position in the epoch; Lightning saves it in checkpoints (mid-epoch resume)."""
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration of the same epoch skip the batches already trained on."""
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def _shard_size(self) -> int:
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.shuffle:  # training ranks must take equally many steps, or all-reduce hangs
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        self._epoch = self.epoch_fn()
        skip = 0
        if self._resume_at is not None:
            if self._resume_at[0] == self._epoch:
                skip = self._resume_at[1]
            self._resume_at = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch)
            order: torch.Tensor | None = torch.randperm(n, generator=generator)
        else:
            order = None
        if self.world_size > 1:
            base = order if order is not None else torch.arange(n)
            order = base[self.rank :: self.world_size][: self._shard_size()]
        if order is not None:
            order = order.to(self.images.device)
        self._yielded = skip
        for i in range(skip, len(self)):
            self._yielded = i + 1
            lo, hi = i * self.batch_size, (i + 1) * self.batch_size
            if order is None:  # contiguous slices are views: no copy
                yield self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                # index_select is a plain gather: ~15x faster than advanced indexing on CPU.
                yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
