"""In-memory storage: splits held as ``uint8`` tensors, batches sliced from them.

Image files are decoded once (in worker processes, resized to ``image_size``) and cached on
disk; the tensors may then live on the training GPU, so that no step copies images from the
host. No DataLoader workers: a batch is one gather from the tensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cnnlab.data import cache as disk_cache
from cnnlab.data.decode import check_bad_images, decode_images
from cnnlab.data.source import FileSplit, SourceData, Split, TensorSplit
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

# Bumped when the layout of the cached files changes, so that old caches are not read.
CACHE_FORMAT = 1


class MemoryStorage:
    """``keep_on_device``: ``true`` copies the ``uint8`` splits to the training device once;
    ``auto`` does so on a GPU when they take at most ``device_memory_fraction`` of its free
    memory; ``false`` keeps them in host memory (pinned with ``pin_memory``)."""

    kind = "memory"

    def __init__(
        self,
        *,
        keep_on_device: bool | str = "auto",
        device_memory_fraction: float = 0.5,
        pin_memory: bool = False,
    ) -> None:
        if keep_on_device not in (True, False, "auto"):
            raise ConfigError(
                f"data.keep_on_device={keep_on_device!r} is not valid; use true, false or auto."
            )
        if not 0 < device_memory_fraction <= 1:
            raise ConfigError(
                f"data.device_memory_fraction={device_memory_fraction!r} must be in (0, 1]: the "
                "share of the GPU's free memory the dataset may take under keep_on_device=auto."
            )
        self.keep_on_device = keep_on_device
        self.device_memory_fraction = float(device_memory_fraction)
        self.pin_memory = pin_memory
        self.cache_hit: bool | None = None
        self.cache_path: Path | None = None

    def materialize(self, data: SourceData, files: Any, size: int, channels: int) -> SourceData:
        """Decode the file splits of ``data`` (cached under ``files.cache_dir``) into tensors."""
        if not any(isinstance(s, FileSplit) for s in data.splits.values()):
            return data
        started = time.perf_counter()
        assert data.root is not None, "file splits come with their root folder"
        listing = [e for s in data.splits.values() for e in s.listing]  # type: ignore[union-attr]
        settings = {"format": CACHE_FORMAT, "image_size": size, "channels": channels}
        key = disk_cache.fingerprint(listing, settings)
        self.cache_path = files.cache_file("image_folder", data.root, key)

        def build() -> dict[str, Any]:
            return _decode(data, size, channels, files.decode_workers)

        if self.cache_path is None:
            decoded, self.cache_hit = build(), False
        else:
            decoded, self.cache_hit = disk_cache.cached(self.cache_path, build)
        log.info(
            "%s %d images of %s in %.1f s.",
            "Loaded cached" if self.cache_hit else "Decoded",
            sum(len(decoded[f"{s}_labels"]) for s in data.splits),
            data.root,
            time.perf_counter() - started,
        )
        bad = dict(zip(decoded["bad_files"], decoded["bad_reasons"], strict=True))
        check_bad_images(bad, files.on_bad_image, data.root)
        splits: dict[str, Split] = {
            s: TensorSplit(decoded[f"{s}_images"], decoded[f"{s}_labels"]) for s in data.splits
        }
        return SourceData(splits, list(decoded["class_names"]), data.root, data.facts)

    def check(self, split: Split) -> tuple[int, ...]:
        """The ``(C, H, W)`` shape of the images the model will see."""
        assert isinstance(split, TensorSplit)
        return tuple(split.images.shape[1:])

    # ---- device residency -------------------------------------------------------------------
    def residence_device(self, trainer: Any, nbytes: int) -> torch.device | None:
        """The non-CPU training device the splits should live on (``keep_on_device``), or None."""
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if device.type == "cpu" or self.keep_on_device is False:
            return None
        if self.keep_on_device is True:
            return device
        if device.type != "cuda":
            return None
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return device if nbytes <= self.device_memory_fraction * free_bytes else None

    def place(self, splits: dict[str, Split], trainer: Any) -> dict[str, Split]:
        """Move the splits to the training device, or pin them, as configured."""
        tensors = {id(t): t for s in splits.values() for t in (s.images, s.labels)}  # type: ignore[union-attr]
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        device = self.residence_device(trainer, nbytes)
        if device is not None:
            log.info("%d MB of uint8 images kept on %s.", nbytes // 2**20, device)
            return _map_tensors(splits, lambda t: t.to(device))
        if self.pin_memory and torch.cuda.is_available():
            return _map_tensors(splits, torch.Tensor.pin_memory)
        return splits

    def loader(
        self, split: Split, batch_size: int, *, train: bool, module: Any
    ) -> TensorBatchLoader:
        assert isinstance(split, TensorSplit)
        trainer = module.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return TensorBatchLoader(
            split.images,
            split.labels,
            batch_size,
            shuffle=train and module.shuffle,
            drop_last=train and module.drop_last,
            seed=module.seed,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if trainer else None,
            alternate_flip=train and module.augment.alternate_flip,
        )

    def first_images(self, split: Split, count: int) -> torch.Tensor:
        assert isinstance(split, TensorSplit)
        return split.images[:count]


def _decode(data: SourceData, size: int, channels: int, workers: int) -> dict[str, Any]:
    """Every file split decoded: ``{split}_images/_labels``, class names, bad files."""
    out: dict[str, Any] = {"class_names": data.class_names, "bad_files": [], "bad_reasons": []}
    for name, split in data.splits.items():
        assert isinstance(split, FileSplit)
        images, bad = decode_images(split.paths, size, channels, workers)
        keep = [p not in bad for p in split.paths]
        out[f"{name}_images"] = torch.from_numpy(images)
        out[f"{name}_labels"] = split.labels[torch.tensor(keep, dtype=torch.bool)]
        relative = dict(zip(split.paths, (e[0] for e in split.listing), strict=True))
        for path, reason in bad.items():
            out["bad_files"].append(relative[path])
            out["bad_reasons"].append(reason)
    return out


def _map_tensors(splits: dict[str, Split], fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Every split tensor replaced by ``fn(tensor)``; a tensor shared by splits maps once."""
    mapped: dict[int, torch.Tensor] = {}
    out = {}
    for name, split in splits.items():
        assert isinstance(split, TensorSplit)
        for t in (split.images, split.labels):
            if id(t) not in mapped:
                mapped[id(t)] = fn(t)
        out[name] = TensorSplit(mapped[id(split.images)], mapped[id(split.labels)])
    return out


class TensorBatchLoader:
    """Iterates over ``(images[idx], labels[idx])`` batches of in-memory tensors.

    The order of an epoch depends only on ``(seed, epoch_fn())``, so a resumed run sees the
    same batches as an uninterrupted one. Under DDP each rank takes every ``world_size``-th
    image of the same permutation, like ``DistributedSampler``. The tensors may live on the
    training device: the permutation is drawn on the CPU, copied there once per epoch, and
    every batch is gathered on the device without a host round trip. ``alternate_flip``: a
    seeded half of the images come mirrored in even epochs, the other half in odd epochs
    (airbench's flip: every image is seen both ways in any two consecutive epochs).
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
        alternate_flip: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_fn = epoch_fn or (lambda: 0)
        self._epoch = 0
        self._yielded = 0
        self._resume_at: tuple[int, int] | None = None
        self._flip_first: torch.Tensor | None = None
        if alternate_flip:
            generator = torch.Generator().manual_seed(self.seed * 100_003 - 1)
            flip = torch.rand(len(labels), generator=generator) < 0.5
            self._flip_first = flip.to(images.device)[:, None, None, None]

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
        order: torch.Tensor | None = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch)
            order = torch.randperm(n, generator=generator)
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
                images, labels = self.images[lo:hi], self.labels[lo:hi]
                flip = None if self._flip_first is None else self._flip_first[lo:hi]
            else:
                idx = order[lo:hi]
                # index_select is a plain gather: ~15x faster than advanced indexing on CPU.
                images, labels = self.images.index_select(0, idx), self.labels.index_select(0, idx)
                flip = None if self._flip_first is None else self._flip_first.index_select(0, idx)
            if flip is not None:
                images = torch.where(
                    flip if self._epoch % 2 == 0 else ~flip, images.flip(-1), images
                )
            yield images, labels
