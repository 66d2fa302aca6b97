"""FileDataModule: image files decoded and transformed per sample in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.base import ImageDataModule, class_subset_map
from cnnlab.errors import ConfigError, DataError

# (file path, label); plain strings so that datasets pickle cheaply into worker processes.
Sample = tuple[str, int]
Samples = list[Sample]
Transform = Callable[[Any], Any]


def build_pipeline(transforms: Sequence[Transform] | None) -> Transform:
    """``transforms`` (v2 transforms on a PIL image) followed by conversion to a uint8 tensor.

    Batches leave the workers as uint8, a quarter of the bytes of float32; conversion to float
    and normalization happen on the training device, exactly as for in-memory datasets.
    """
    from torchvision.transforms import v2

    steps = list(transforms or [])
    for step in steps:
        if not callable(step):
            raise ConfigError(
                f"data transform {step!r} is not callable; each entry of data.train_transforms / "
                "data.eval_transforms needs a _target_ such as torchvision.transforms.v2.Resize."
            )
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)])


class ImageFileDataset(Dataset):
    """``(transform(PIL image converted to mode), label)`` for each ``(path, label)``."""

    def __init__(self, samples: Samples, transform: Transform, mode: str) -> None:
        self.samples = samples
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            raise DataError(f"Cannot decode image {path}: {err}") from None
        return self.transform(image), label


class EpochSampler(Sampler[int]):
    """A permutation that depends only on ``(seed, epoch)``: a resumed run sees the same order.

    Lightning calls :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class FileDataModule(ImageDataModule[Samples]):
    """Base for datasets read from image files, one sample at a time, in DataLoader workers.

    Subclasses implement :meth:`load_samples`. ``eval_transforms`` (a list of torchvision v2
    transforms, instantiated from ``_target_`` configs) is the deterministic preprocessing of
    validation and test images; ``train_transforms`` is the training pipeline, per-sample
    augmentation included (``None``: the eval pipeline). Both must produce ``in_channels x
    image_size x image_size`` images; batches then go through the same on-device conversion,
    batched ``augment`` and normalization as in-memory data. ``num_workers``, ``pin_memory``
    and ``persistent_workers`` configure the DataLoaders; worker RNGs are seeded from ``seed``
    with Lightning's ``pl_worker_init_function``.
    """

    def __init__(
        self,
        *,
        num_workers: int = 0,
        persistent_workers: bool = False,
        train_transforms: Sequence[Transform] | None = None,
        eval_transforms: Sequence[Transform] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.in_channels not in (1, 3):
            raise ConfigError(
                f"data.in_channels={self.in_channels}: image files are read as grey (1) or "
                "RGB (3) images."
            )
        self.num_workers = int(num_workers)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.eval_transform = build_pipeline(eval_transforms)
        self.train_transform = (
            build_pipeline(train_transforms)
            if train_transforms is not None
            else self.eval_transform
        )
        self.image_mode = "RGB" if self.in_channels == 3 else "L"

    # ---- to implement -----------------------------------------------------------------------
    def load_samples(self) -> tuple[dict[str, Samples], list[str]]:
        """Return ``({"train": [(path, label)], ["val": ..., "test": ...]}, class_names)``."""
        raise NotImplementedError

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits, source_names = self.load_samples()
        if self.classes:
            new_label = class_subset_map(source_names, self.classes).tolist()
            splits = {
                k: [(p, new_label[y]) for p, y in v if new_label[y] >= 0] for k, v in splits.items()
            }
            source_names = self.classes
        self.splits = self._arrange_splits(splits)
        self._check_class_names(source_names)
        for split in ("train", "val", "test"):
            if not self.splits[split]:
                raise DataError(f"{self.name}: the {split} split has no images.")
        self.mean, self.std = self._normalization_stats()
        first = self.splits["train"][:1]
        for transform, what in ((self.eval_transform, "eval"), (self.train_transform, "train")):
            image, _ = ImageFileDataset(first, transform, self.image_mode)[0]
            self._check_image_shape(image.shape, f"images after data.{what}_transforms")

    def _split_len(self, split: Samples) -> int:
        return len(split)

    def _split_subset(self, split: Samples, index: torch.Tensor) -> Samples:
        return [split[i] for i in index.tolist()]

    # ---- loaders ----------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        from lightning.fabric.utilities.seed import pl_worker_init_function

        transform = self.train_transform if train else self.eval_transform
        dataset = ImageFileDataset(self.splits[split], transform, self.image_mode)
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        shuffle = train and self.shuffle
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochSampler(len(dataset), self.seed) if shuffle else None,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            generator=torch.Generator().manual_seed(self.seed + rank),
            worker_init_fn=partial(pl_worker_init_function, rank=rank),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
