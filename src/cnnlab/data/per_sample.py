"""Per-sample storage: each image decoded and transformed on its own in DataLoader workers.

For large images and per-sample augmentation (torchvision v2 pipelines on PIL images). Files
are checked once (cached), so an undecodable one is reported before training. Batches leave the
workers as ``uint8`` tensors, like in-memory batches: conversion to float, batched augmentation
and normalization happen on the training device for both storages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cnnlab.data import cache as disk_cache
from cnnlab.data.decode import FileOptions, check_bad_images, find_bad_images
from cnnlab.data.source import FileSplit, SourceData, Split, TensorSplit
from cnnlab.errors import ConfigError, DataError

Transform = Callable[[Any], Any]


def build_pipeline(transforms: Sequence[Transform] | None, image_size: int) -> Transform:
    """``transforms`` (v2 transforms; None: resize to ``image_size``), then a uint8 tensor."""
    from torchvision.transforms import v2

    steps = list(transforms) if transforms is not None else [v2.Resize([image_size] * 2)]
    for step in steps:
        if not callable(step):
            raise ConfigError(
                f"data transform {step!r} is not callable; each entry of data.transforms.train / "
                "data.transforms.eval needs a _target_ such as torchvision.transforms.v2.Resize."
            )
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)])


def worker_context() -> str | None:
    """The start method for DataLoader workers: the platform's own, also inside a joblib (loky)
    sweep job, whose default context makes DataLoader workers fail ('Process' object has no
    attribute 'env')."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver"):
        return None
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class SampleDataset(Dataset):
    """``(transform(image), label)`` per sample of a file split (PIL images converted to
    ``mode``) or of a tensor split (``uint8`` tensors)."""

    def __init__(self, split: Split, transform: Transform, mode: str) -> None:
        self.split = split
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.split.labels[index])
        if isinstance(self.split, TensorSplit):
            from torchvision import tv_tensors

            return self.transform(tv_tensors.Image(self.split.images[index])), label
        from PIL import Image

        path = self.split.paths[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            raise DataError(f"Cannot decode image {path}: {err}") from None
        return self.transform(image), label


class PerSampleStorage:
    """``transforms``: ``{"train": [...], "eval": [...]}`` v2 pipelines (``eval`` None: resize
    to ``image_size``; ``train`` None: the eval pipeline). ``num_workers``,
    ``persistent_workers`` and ``pin_memory`` configure the DataLoaders; worker RNGs are seeded
    with Lightning's ``pl_worker_init_function``; the training order is a
    :class:`DistributedSampler` of ``seed`` and the epoch."""

    kind = "files"

    def __init__(
        self,
        *,
        transforms: dict[str, Sequence[Transform] | None] | None,
        image_size: int,
        in_channels: int,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if in_channels not in (1, 3):
            raise ConfigError(
                f"data.in_channels={in_channels}: image files are read as grey (1) or RGB (3)."
            )
        transforms = dict(transforms or {})
        unknown = sorted(set(transforms) - {"train", "eval"})
        if unknown:
            raise ConfigError(f"data.transforms has {unknown}; it takes train and eval lists.")
        self.eval_transform = build_pipeline(transforms.get("eval"), image_size)
        train = transforms.get("train")
        self.train_transform = (
            build_pipeline(train, image_size) if train is not None else self.eval_transform
        )
        self.mode = "RGB" if in_channels == 3 else "L"
        self.num_workers = int(num_workers)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.pin_memory = pin_memory
        self.check_cache_hit: bool | None = None

    def materialize(
        self, data: SourceData, files: FileOptions, size: int, channels: int
    ) -> SourceData:
        """Check every file once with PIL (cached), leaving the undecodable ones out."""
        file_splits = {k: s for k, s in data.splits.items() if isinstance(s, FileSplit)}
        if not file_splits:
            return data
        assert data.root is not None, "file splits come with their root folder"
        listing = [e for s in file_splits.values() for e in s.listing]
        key = disk_cache.fingerprint(listing, "checked with PIL")
        path = files.cache_file("image_check", data.root, key)

        def build() -> dict[str, Any]:
            paths = [p for s in file_splits.values() for p in s.paths]
            relative = dict(zip(paths, (e[0] for e in listing), strict=True))
            bad = find_bad_images(paths, files.decode_workers)
            return {"bad_files": [relative[p] for p in bad], "bad_reasons": list(bad.values())}

        if path is None:
            checked, self.check_cache_hit = build(), False
        else:
            checked, self.check_cache_hit = disk_cache.cached(path, build)
        check_bad_images(
            dict(zip(checked["bad_files"], checked["bad_reasons"], strict=True)),
            files.on_bad_image,
            data.root,
        )
        bad = set(checked["bad_files"])
        splits = dict(data.splits)
        for name, split in file_splits.items():
            keep = [i for i, entry in enumerate(split.listing) if entry[0] not in bad]
            splits[name] = split.subset(torch.tensor(keep, dtype=torch.long))
        return SourceData(splits, data.class_names, data.root, data.facts)

    def check(self, split: Split) -> tuple[int, ...]:
        """The ``(C, H, W)`` shape of the first sample after either pipeline (must agree)."""
        shapes = {
            tuple(SampleDataset(split, t, self.mode)[0][0].shape)
            for t in (self.eval_transform, self.train_transform)
        }
        if len(shapes) > 1:
            raise ConfigError(
                f"data.transforms.train and data.transforms.eval give images of shapes "
                f"{sorted(shapes)}; both must end at the same size."
            )
        return shapes.pop()

    def place(self, splits: dict[str, Split], trainer: Any) -> dict[str, Split]:
        return splits

    def loader(self, split: Split, batch_size: int, *, train: bool, module: Any) -> DataLoader:
        from lightning.fabric.utilities.seed import pl_worker_init_function

        transform = self.train_transform if train else self.eval_transform
        dataset = SampleDataset(split, transform, self.mode)
        trainer = module.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = None
        if train and module.shuffle:
            sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=module.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train and module.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            generator=torch.Generator().manual_seed(module.seed + rank),
            worker_init_fn=partial(pl_worker_init_function, rank=rank),
            multiprocessing_context=worker_context() if self.num_workers else None,
        )

    def first_images(self, split: Split, count: int) -> torch.Tensor:
        dataset = SampleDataset(split, self.eval_transform, self.mode)
        return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
