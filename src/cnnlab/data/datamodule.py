"""ClassificationDataModule: one Lightning data module for every source and storage.

``source`` says where images come from (``cnnlab.data.cifar.CIFAR10Source``, ...);
``storage`` how they are held: ``memory`` (``uint8`` tensors, batches sliced on the device) or
``files`` (decoded per sample in DataLoader workers, with v2 ``transforms``). Then the same
rules for both: a class subset, train/val/test splits, checks against the config, and on the
training device conversion to float, batched ``augment`` and normalization.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from cnnlab.data.augment import BatchAugment
from cnnlab.data.decode import FileOptions
from cnnlab.data.memory import MemoryStorage
from cnnlab.data.normalize import Normalizer
from cnnlab.data.per_sample import PerSampleStorage
from cnnlab.data.source import Source, SourceData, parameters
from cnnlab.data.splits import arrange, random_sample, refuse_zero_steps, select_classes
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Keys of the data config that a source may take as well (when its constructor names them).
SHARED = ("num_classes", "in_channels", "image_size")


def make_source(source: str | Source, options: dict[str, Any], shared: dict[str, Any]) -> Source:
    """``source`` itself, or the class it names built from ``options`` (+ ``shared`` keys)."""
    if isinstance(source, Source):
        if options:
            raise ConfigError(f"data options {sorted(options)} are not data module settings.")
        return source
    module_name, _, class_name = source.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"data.source={source!r} is not an importable class.") from None
    params = parameters(cls)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(
            f"data.{unknown[0]} is not a setting of the data module or of its source "
            f"{class_name}; the source takes {sorted(p for p in params if p not in SHARED)}."
        )
    return cls(**options, **{k: v for k, v in shared.items() if k in params})


class ClassificationDataModule(L.LightningDataModule):
    """Batches of ``uint8`` images and int64 labels for the classifier.

    - ``classes``: keep a subset of the source's class names, relabelled ``0..k-1`` in order;
    - ``split``: sizes ``{train, val, test}`` (counts, fractions or ``rest``) of one seeded
      permutation, used when the source has no test set; else ``test_split`` of train;
    - ``val_split``: a fraction or count of train (random with ``split_seed``, or the first
      images with ``val_split_mode: head``), ``test``, or the source's own (``official``); an
      evaluation split listed class by class by its source comes in ``split_seed`` order;
    - checks the class names and image shape against the config (what the model is built from);
    - ``log_augmented_grid``: writes the first augmented training batch to TensorBoard.

    Other keys are the source's own (e.g. ``root``, ``download``), or storage settings:
    ``keep_on_device``/``device_memory_fraction`` (memory), ``transforms``/``num_workers``/
    ``persistent_workers`` (files), ``cache_dir``/``decode_workers``/``on_bad_image`` (image
    files in either storage).
    """

    def __init__(
        self,
        *,
        source: str | Source,
        class_names: Sequence[str],
        in_channels: int,
        image_size: int,
        num_classes: int | None = None,
        name: str | None = None,
        storage: str = "memory",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        classes: Sequence[str] | None = None,
        split: dict[str, float | int | str] | None = None,
        val_split: float | int | str = 0.1,
        val_split_mode: str = "random",
        test_split: float | int = 0.0,
        split_seed: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = True,
        normalize: dict[str, Any] | None = None,
        augment: BatchAugment | None = None,
        transforms: dict[str, Any] | None = None,
        keep_on_device: bool | str = "auto",
        device_memory_fraction: float = 0.5,
        num_workers: int = 4,
        persistent_workers: bool = True,
        cache_dir: str | None = None,
        decode_workers: int | None = None,
        on_bad_image: str = "skip",
        log_augmented_grid: bool = False,
        grid_samples: int = 64,
        **source_options: Any,
    ) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names) if num_classes is None else int(num_classes)
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        shared = {"num_classes": self.num_classes, "in_channels": self.in_channels}
        self.source = make_source(source, source_options, {**shared, "image_size": self.image_size})
        self.name = name or self.source.title
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.classes = list(classes) if classes else None
        self.split, self.val_split, self.test_split = split, val_split, test_split
        if val_split_mode not in ("random", "head"):
            raise ConfigError(
                f"data.val_split_mode={val_split_mode!r} is not valid; use 'random' (a seeded "
                "random subset of train) or 'head' (the first images of train)."
            )
        self.head = val_split_mode == "head"
        self.split_seed, self.seed = int(split_seed), int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        if augment is not None and not isinstance(augment, BatchAugment):
            raise ConfigError(
                f"data.augment must be a batched augmentation (cnnlab.data.augment.BatchAugment, "
                f"presets data/augment=none|flip_crop), got {type(augment).__name__}; per-sample "
                "pipelines go in data.transforms (presets data/transforms=...)."
            )
        self.augment = augment or BatchAugment()
        self.normalizer = Normalizer(normalize or {}, self.augment, self.in_channels, self.name)
        self.normalizer.grid = (log_augmented_grid, int(grid_samples))
        self.files = FileOptions(cache_dir, decode_workers, on_bad_image)
        self.storage = self._storage(
            storage,
            transforms,
            keep_on_device,
            device_memory_fraction,
            pin_memory,
            num_workers,
            persistent_workers,
        )
        self.splits: dict[str, Any] = {}
        self.facts: dict[str, Any] = {}
        self._prepared: SourceData | None = None  # what prepare_data read, for setup

    def _storage(
        self,
        kind: str,
        transforms: Any,
        keep: Any,
        fraction: float,
        pin: bool,
        workers: int,
        persistent: bool,
    ) -> MemoryStorage | PerSampleStorage:
        if kind == "memory":
            if transforms and any(transforms.get(k) is not None for k in transforms):
                raise ConfigError(
                    f"{self.name} is held in memory (data.storage=memory) and augmented per batch "
                    "on the device (data/augment=none|flip_crop); per-sample data.transforms "
                    "need data.storage=files (or data/transforms=none)."
                )
            return MemoryStorage(
                keep_on_device=keep, device_memory_fraction=fraction, pin_memory=pin
            )
        if kind == "files":
            if self.augment.alternate_flip:
                raise ConfigError(
                    f"data.augment.hflip=alternate needs {self.name} in memory "
                    "(data.storage=memory); with data.storage=files use hflip=true."
                )
            return PerSampleStorage(
                transforms=transforms,
                image_size=self.image_size,
                in_channels=self.in_channels,
                num_workers=workers,
                persistent_workers=persistent,
                pin_memory=pin,
            )
        raise ConfigError(
            f"data.storage={kind!r} is not valid; use 'memory' (decoded once into uint8 tensors) "
            "or 'files' (read per sample in DataLoader workers)."
        )

    # ---- set-up -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download (one process per node, before ``setup``); decode/check files into the cache."""
        if self.splits:  # set up already (testing after fit): the data is in place
            return
        self.source.prepare()
        if self.files.cache_dir is not None:
            self._prepared = self._materialize()

    def _materialize(self) -> SourceData:
        data = self.source.load()
        return self.storage.materialize(data, self.files, self.image_size, self.in_channels)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self._prepared or self._materialize()
        self._prepared = None
        names, splits = data.class_names, data.splits
        if self.classes:
            splits = {k: select_classes(v, names, self.classes) for k, v in splits.items()}
            names = self.classes
        self._check_class_names(names)
        splits, how = arrange(
            splits,
            split=self.split,
            val_split=self.val_split,
            test_split=self.test_split,
            seed=self.split_seed,
            head=self.head,
            dataset=self.name,
        )
        for part, items in splits.items():
            if not len(items):
                raise DataError(f"{self.name}: the {part} split has no images.")
        if stage in (None, "fit"):  # before fit starts the run; evaluation trains nothing
            refuse_zero_steps(len(splits["train"]), self.batch_size, self.drop_last, self.trainer)
        self.facts = {**data.facts, "splits": how}
        log.info("%s: %s (%s).", self.name, {k: len(v) for k, v in splits.items()}, how)
        self._check_shape(self.storage.check(splits["train"]))
        self.normalizer.fit(splits["train"])
        self.splits = self.storage.place(splits, self.trainer)

    def _check_class_names(self, names: list[str]) -> None:
        if len(names) != self.num_classes or names != self.class_names:
            raise ConfigError(
                f"{self.name} has classes {names}, but the data config says "
                f"num_classes={self.num_classes}, class_names={self.class_names}. Make "
                "data.class_names list the classes in label order."
            )

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(shape) != expected:
            raise DataError(
                f"{self.name} images have shape {tuple(shape)} (C, H, W) as the model sees them, "
                f"but the data config says in_channels={self.in_channels}, image_size="
                f"{self.image_size}. Fix data.in_channels / data.image_size (or data.transforms)."
            )

    # ---- what the run records and the model asks for --------------------------------------------
    @property
    def mean(self) -> torch.Tensor | None:
        return self.normalizer.mean

    @property
    def std(self) -> torch.Tensor | None:
        return self.normalizer.std

    def describe(self) -> dict[str, Any]:
        """Dataset facts worth logging next to the results (``metrics.json``)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "storage": self.storage.kind,
            "sizes": {k: len(v) for k, v in self.splits.items()},
            **self.facts,
            "mean": self.mean.tolist() if self.mean is not None else None,
            "std": self.std.tolist() if self.std is not None else None,
        }

    def sample_train_images(self, count: int) -> torch.Tensor:
        """``count`` training images drawn with ``seed`` and normalized (the same on each rank)."""
        sample = random_sample(self.splits["train"], count, self.seed)
        return self.normalizer.normalize(self.storage.first_images(sample, count))

    # ---- loaders and the device -------------------------------------------------------------
    def train_dataloader(self) -> Any:
        return self.storage.loader(self.splits["train"], self.batch_size, train=True, module=self)

    def val_dataloader(self) -> Any:
        return self.storage.loader(
            self.splits["val"], self.eval_batch_size, train=False, module=self
        )

    def test_dataloader(self) -> Any:
        return self.storage.loader(
            self.splits["test"], self.eval_batch_size, train=False, module=self
        )

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        trainer = self.trainer
        training = trainer is not None and trainer.training
        return self.normalizer(images, training, trainer, self.name), labels
