"""Data modules: the shared image pipeline, and InMemoryDataModule for datasets held as tensors.

:class:`ImageDataModule` holds what every dataset of cnnlab shares: the class list and shape
checks against the config, seeded train/val/test splitting, normalization and batched
augmentation on the training device after transfer, and an optional grid of augmented training
images for TensorBoard. :class:`InMemoryDataModule` keeps a decoded dataset as ``uint8`` tensors;
:class:`cnnlab.data.files.FileDataModule` reads image files in DataLoader workers. Both deliver
``uint8`` batches to the device, so the model always sees the same float normalized images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import lightning as L
import torch

from cnnlab.data.augment import BatchAugment
from cnnlab.data.loader import TensorBatchLoader
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Split = tuple[torch.Tensor, torch.Tensor]
S = TypeVar("S")


class ImageDataModule(L.LightningDataModule, Generic[S]):
    """What in-memory and file datasets share; a split is of type ``S`` (tensors or samples).

    - keeps only ``classes`` (a subset of class names), relabelled ``0..k-1`` in listed order;
    - carves a validation set out of train (``val_split``: a fraction or a count, taken at random
      with ``split_seed`` or from the head of the training set with ``val_split_mode: head``),
      or uses the test set (``val_split: test``) or the source's own (``val_split: official``);
    - carves a test set out of train (``test_split``) when the source has none;
    - checks that class names agree with ``num_classes``/``class_names`` of the config;
    - converts ``uint8`` batches to float, augments them (training only, ``augment``) and
      normalizes them on the training device after transfer;
    - with ``log_augmented_grid``, writes the first augmented training batch (``grid_samples``
      images) to TensorBoard as one grid image.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        class_names: Sequence[str],
        batch_size: int,
        normalize: dict[str, Any],
        augment: BatchAugment | None = None,
        eval_batch_size: int | None = None,
        classes: Sequence[str] | None = None,
        val_split: float | int | str = 0.1,
        val_split_mode: str = "random",
        test_split: float | int = 0.0,
        split_seed: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = False,
        name: str | None = None,
        log_augmented_grid: bool = False,
        grid_samples: int = 64,
    ) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.class_names = list(class_names)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.normalize = dict(normalize)
        if augment is not None and not isinstance(augment, BatchAugment):
            raise ConfigError(
                f"data.augment must be a batched augmentation (cnnlab.data.augment.BatchAugment, "
                f"presets none/flip_crop), got {type(augment).__name__}."
            )
        self.augment = augment if augment is not None else BatchAugment()
        self.classes = list(classes) if classes else None
        self.val_split = val_split
        self.val_split_mode = val_split_mode
        self.test_split = test_split
        self.split_seed = int(split_seed)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.log_augmented_grid = bool(log_augmented_grid)
        self.grid_samples = int(grid_samples)
        self._grid_logged = False
        self.splits: dict[str, S] = {}
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self._device_stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if val_split_mode not in ("random", "head"):
            raise ConfigError(
                f"data.val_split_mode={val_split_mode!r} is not valid; use 'random' (a seeded "
                "random subset of train) or 'head' (the first images of train)."
            )

    # ---- split containers (tensors or sample lists) -----------------------------------------
    def _split_len(self, split: S) -> int:
        raise NotImplementedError

    def _split_subset(self, split: S, index: torch.Tensor) -> S:
        raise NotImplementedError

    # ---- splitting ----------------------------------------------------------------------------
    def _arrange_splits(self, splits: dict[str, S]) -> dict[str, S]:
        out = dict(splits)
        if "test" not in out:
            if not self.test_split:
                raise ConfigError(
                    f"{self.name} has no test split of its own: set data.test_split to a fraction "
                    "(e.g. 0.2) of the training images to hold out for testing."
                )
            out["test"], out["train"] = self._take(out["train"], self.test_split, "test_split")
        if self.val_split == "test":
            out["val"] = out["test"]
        elif self.val_split == "official":
            if "val" not in splits:
                raise ConfigError(
                    f"data.val_split=official, but {self.name} has no official validation split; "
                    "use a fraction (e.g. 0.1) or 'test'."
                )
        else:
            out["val"], out["train"] = self._take(out["train"], self.val_split, "val_split")
        return out

    def _take(self, split: S, amount: float | int | str, key: str) -> tuple[S, S]:
        """Split off ``amount`` (a fraction in (0, 1) or a count) of ``split``: (taken, rest)."""
        n = self._split_len(split)
        if isinstance(amount, str) or amount <= 0:
            raise ConfigError(
                f"data.{key}={amount!r} is not valid: use a fraction in (0, 1), a number of "
                "images, 'test' or 'official'."
            )
        count = round(amount * n) if amount < 1 else int(amount)
        if not 0 < count < n:
            raise ConfigError(
                f"data.{key}={amount!r} takes {count} of the {n} available images of "
                f"{self.name}, which leaves no data on one side; choose a value in (0, 1) "
                f"or a count between 1 and {n - 1}."
            )
        if self.val_split_mode == "head":
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        taken, rest = order[:count].sort().values, order[count:].sort().values
        return self._split_subset(split, taken), self._split_subset(split, rest)

    def _check_class_names(self, names: list[str]) -> None:
        if len(names) != self.num_classes or names != self.class_names:
            raise ConfigError(
                f"{self.name} has classes {names}, but the data config says "
                f"num_classes={self.num_classes}, class_names={self.class_names}. Make "
                "data.class_names list the classes in label order."
            )

    def _check_image_shape(self, shape: Sequence[int], what: str) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(shape) != expected:
            raise DataError(
                f"{self.name} {what} have shape {tuple(shape)} (C, H, W), but the data "
                f"config says in_channels={self.in_channels}, image_size={self.image_size}. "
                "Fix data.in_channels / data.image_size (or the resizing transforms) to match."
            )

    # ---- normalization ------------------------------------------------------------------------
    def _train_pixel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images scaled to [0, 1]."""
        raise ConfigError(
            f"data.normalize has mean/std null (computed on the training split), which "
            f"{self.name} cannot do without decoding every training image; give the values, "
            "e.g. data/normalize=unit or data.normalize.mean=[...] data.normalize.std=[...]."
        )

    def _normalization_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.normalize.get("mean"), self.normalize.get("std")
        if mean is None or std is None:
            train_mean, train_std = self._train_pixel_stats()
            mean = train_mean if mean is None else mean
            std = train_std if std is None else std
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        for label, t in (("mean", mean_t), ("std", std_t)):
            if t.numel() not in (1, self.in_channels):
                raise ConfigError(
                    f"data.normalize.{label} has {t.numel()} values; give 1 or "
                    f"in_channels={self.in_channels}."
                )
        if (std_t <= 0).any():
            raise ConfigError(f"data.normalize.std={std_t.tolist()} must be positive.")
        return mean_t.expand(self.in_channels).clone(), std_t.expand(self.in_channels).clone()

    def describe(self) -> dict[str, Any]:
        """Dataset facts worth logging next to the results."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "sizes": {k: self._split_len(v) for k, v in self.splits.items()},
            "mean": self.mean.tolist() if self.mean is not None else None,
            "std": self.std.tolist() if self.std is not None else None,
        }

    # ---- on the device ------------------------------------------------------------------------
    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training and (self.augment.enabled or self.log_augmented_grid):
            # Augmentation works on [0, 1] images (padding and cutout fill with black).
            images = images.float().div_(255)
            if self.augment.enabled:
                images = self.augment(images)
            if self.log_augmented_grid and not self._grid_logged:
                self._log_grid(images)
            mean, std = self._stats_on(images.device)
            return images.sub_(mean).div_(std), labels
        return self.normalize_images(images), labels

    def _log_grid(self, images: torch.Tensor) -> None:
        """Write ``images`` (floats in [0, 1], augmented) to every TensorBoard logger, once."""
        from lightning.pytorch.loggers import TensorBoardLogger
        from torchvision.utils import make_grid

        self._grid_logged = True
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            log.warning("data.log_augmented_grid=true, but the run has no TensorBoard logger.")
            return
        shown = images[: self.grid_samples].detach().clamp(0, 1).cpu()
        grid = make_grid(shown, nrow=max(1, round(len(shown) ** 0.5)))
        for logger in loggers:
            logger.experiment.add_image(f"{self.name}/augmented_train", grid, trainer.global_step)

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> normalized float, as the model sees evaluation batches."""
        scale, shift = self._affine_on(images.device)
        # (x / 255 - mean) / std as one multiply-add on a fresh float copy: 2 in-place kernels.
        return images.float().mul_(scale).add_(shift)

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` shaped ``(1, C, 1, 1)`` on ``device``."""
        if device not in self._device_stats:
            assert self.mean is not None and self.std is not None, "call setup() first"
            self._device_stats[device] = (
                self.mean.to(device)[None, :, None, None],
                self.std.to(device)[None, :, None, None],
            )
        return self._device_stats[device]

    def _affine_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 / (255 std), -mean / std)``: uint8 pixels to normalized values in one step."""
        if device not in self._device_affine:
            mean, std = self._stats_on(device)
            self._device_affine[device] = (1 / (255 * std), -mean / std)
        return self._device_affine[device]


class InMemoryDataModule(ImageDataModule[Split]):
    """Base for datasets held in memory as ``uint8`` images ``(N, C, H, W)`` and int64 labels.

    Subclasses implement :meth:`load_splits`, returning ``{"train": (x, y)}`` and optionally
    ``"val"`` and ``"test"``, plus the source's class names. Batches are sliced from the tensors
    (no worker processes); augmentation is batched on the device (``augment``). Per-sample
    transform pipelines (``train_transforms``/``eval_transforms``) belong to file datasets.

    ``keep_on_device``: ``true`` copies the ``uint8`` splits to the training device once, so
    batches are gathered there and no step copies images from the host; ``auto`` does so on a
    GPU when the splits take at most ``device_memory_fraction`` of its free memory; ``false``
    keeps them in host memory (pinned with ``pin_memory``). On a CPU run all three are the same.
    """

    def __init__(
        self,
        *,
        train_transforms: Any = None,
        eval_transforms: Any = None,
        keep_on_device: bool | str = "auto",
        device_memory_fraction: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        if train_transforms is not None or eval_transforms is not None:
            raise ConfigError(
                f"{self.name} is held in memory and augmented per batch on the device: it takes "
                "data/augment=none or flip_crop (data.augment), not per-sample transform lists "
                "(data.train_transforms / data.eval_transforms, presets celeba and cats_dogs, "
                "which are for file datasets)."
            )

    # ---- to implement -----------------------------------------------------------------------
    def load_splits(self) -> tuple[dict[str, Split], list[str]]:
        """Return ``({"train": (x, y), ["val": ..., "test": ...]}, source_class_names)``."""
        raise NotImplementedError

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits, source_names = self.load_splits()
        if self.classes:
            splits = {k: select_classes(v, source_names, self.classes) for k, v in splits.items()}
            source_names = self.classes
        self.splits = self._arrange_splits(splits)
        self._check_shapes(source_names)
        self.mean, self.std = self._normalization_stats()
        device = self.residence_device()
        if device is not None:
            self._map_splits(lambda t: t.to(device))
            log.info(
                "%s: %d MB of uint8 images kept on %s (data.keep_on_device=%s).",
                self.name,
                self.split_bytes() // 2**20,
                device,
                self.keep_on_device,
            )
        elif self.pin_memory and torch.cuda.is_available():
            self._map_splits(torch.Tensor.pin_memory)

    def residence_device(self) -> torch.device | None:
        """The non-CPU training device the splits should live on (``keep_on_device``), or None."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if device.type == "cpu" or self.keep_on_device is False:
            return None
        if self.keep_on_device is True:
            return device
        if device.type != "cuda":
            return None
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return device if self.split_bytes() <= self.device_memory_fraction * free_bytes else None

    def split_bytes(self) -> int:
        """Bytes taken by the images and labels of all splits (shared splits counted once)."""
        tensors = {id(t): t for x, y in self.splits.values() for t in (x, y)}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def _map_splits(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every split tensor by ``fn(tensor)``; a tensor shared by splits maps once."""
        mapped: dict[int, torch.Tensor] = {}
        for x, y in self.splits.values():
            for t in (x, y):
                if id(t) not in mapped:
                    mapped[id(t)] = fn(t)
        self.splits = {k: (mapped[id(x)], mapped[id(y)]) for k, (x, y) in self.splits.items()}

    def sample_train_images(self, count: int) -> torch.Tensor:
        """The first ``count`` training images (all if fewer), normalized as the model sees them.

        For models that initialize themselves from data (:meth:`AirbenchNet.init_from_data`).
        The same images on every DDP rank, so every rank computes the same initialization.
        """
        return self.normalize_images(self.splits["train"][0][:count])

    def _split_len(self, split: Split) -> int:
        return len(split[1])

    def _split_subset(self, split: Split, index: torch.Tensor) -> Split:
        return split[0][index], split[1][index]

    def _check_shapes(self, names: list[str]) -> None:
        self._check_image_shape(self.splits["train"][0].shape[1:], "images")
        self._check_class_names(names)

    def _train_pixel_stats(self) -> tuple[list[float], list[float]]:
        return channel_stats(self.splits["train"][0])

    # ---- loaders ----------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> TensorBatchLoader:
        x, y = self.splits[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return TensorBatchLoader(
            x,
            y,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train and self.shuffle,
            drop_last=train and self.drop_last,
            seed=self.seed,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if trainer else None,
        )

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", train=False)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of uint8 ``(N, C, H, W)`` images scaled to [0, 1].

    Exact, from a histogram of the 256 pixel values per channel: no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean).pow(2)).sum() / max(n - 1, 1)
        means.append(mean.item())
        stds.append(var.sqrt().item())
    return means, stds


def class_subset_map(source_names: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """``new_label[old_label]``: ``0..k-1`` for the listed ``classes``, -1 for the others."""
    unknown = [c for c in classes if c not in source_names]
    if unknown:
        raise ConfigError(
            f"data.classes has {unknown}, which the dataset does not have. "
            f"Valid class names: {list(source_names)}."
        )
    new_label = torch.full((len(source_names),), -1, dtype=torch.long)
    for i, c in enumerate(classes):
        new_label[list(source_names).index(c)] = i
    return new_label


def select_classes(split: Split, source_names: Sequence[str], classes: Sequence[str]) -> Split:
    """Keep the images of ``classes`` and relabel them ``0..k-1`` in the listed order."""
    x, y = split
    mapped = class_subset_map(source_names, classes)[y]
    keep = mapped >= 0
    return x[keep], mapped[keep]
