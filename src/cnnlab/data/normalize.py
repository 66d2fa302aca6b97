"""On the training device: uint8 batches to float, batched augmentation, normalization."""

from __future__ import annotations

import logging
from typing import Any

import torch

from cnnlab.data.augment import BatchAugment
from cnnlab.data.source import Split, TensorSplit
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)


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


class Normalizer:
    """``normalize``: ``{mean, std}`` per channel (or one value); ``null`` values are computed
    on the training split. Training batches go through ``augment`` (on [0, 1] images) first.
    ``grid``: ``(enabled, samples)`` of the debug image of the first augmented batch."""

    def __init__(
        self, normalize: dict[str, Any], augment: BatchAugment, channels: int, name: str
    ) -> None:
        self.settings = dict(normalize)
        self.augment = augment
        self.channels = channels
        self.name = name
        self.grid = (False, 64)
        self._grid_logged = False
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def fit(self, train: Split) -> None:
        """Fix mean/std: the configured values, or those of the training images."""
        mean, std = self.settings.get("mean"), self.settings.get("std")
        if mean is None or std is None:
            if not isinstance(train, TensorSplit):
                raise ConfigError(
                    f"data.normalize has mean/std null (computed on the training split), which "
                    f"{self.name} cannot do without decoding every training image; give the "
                    "values, e.g. data/normalize=unit or data.normalize.mean=[...] "
                    "data.normalize.std=[...], or use data.storage=memory."
                )
            train_mean, train_std = channel_stats(train.images)
            mean = train_mean if mean is None else mean
            std = train_std if std is None else std
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        for label, t in (("mean", mean_t), ("std", std_t)):
            if t.numel() not in (1, self.channels):
                raise ConfigError(
                    f"data.normalize.{label} has {t.numel()} values; give 1 or "
                    f"in_channels={self.channels}."
                )
        if (std_t <= 0).any():
            raise ConfigError(f"data.normalize.std={std_t.tolist()} must be positive.")
        self.mean = mean_t.expand(self.channels).clone()
        self.std = std_t.expand(self.channels).clone()

    def __call__(
        self, images: torch.Tensor, training: bool, trainer: Any, name: str
    ) -> torch.Tensor:
        grid, _ = self.grid
        if training and (self.augment.enabled or grid):
            # Augmentation works on [0, 1] images (padding and cutout fill with black).
            images = images.float().div_(255)
            if self.augment.enabled:
                images = self.augment(images)
            if grid and not self._grid_logged:
                self._log_grid(images, trainer, name)
            mean, std = self._stats_on(images.device)
            return images.sub_(mean).div_(std)
        return self.normalize(images)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> normalized float, as the model sees evaluation batches."""
        scale, shift = self._affine_on(images.device)
        # (x / 255 - mean) / std as one multiply-add on a fresh float copy: 2 in-place kernels.
        return images.float().mul_(scale).add_(shift)

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` shaped ``(1, C, 1, 1)`` on ``device``."""
        if device not in self._stats:
            assert self.mean is not None and self.std is not None, "call fit() first"
            self._stats[device] = (
                self.mean.to(device)[None, :, None, None],
                self.std.to(device)[None, :, None, None],
            )
        return self._stats[device]

    def _affine_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 / (255 std), -mean / std)``: uint8 pixels to normalized values in one step."""
        if device not in self._affine:
            mean, std = self._stats_on(device)
            self._affine[device] = (1 / (255 * std), -mean / std)
        return self._affine[device]

    def _log_grid(self, images: torch.Tensor, trainer: Any, name: str) -> None:
        """Write ``images`` (floats in [0, 1], augmented) to every TensorBoard logger, once."""
        from lightning.pytorch.loggers import TensorBoardLogger
        from torchvision.utils import make_grid

        self._grid_logged = True
        if trainer is None or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            log.warning("data.log_augmented_grid=true, but the run has no TensorBoard logger.")
            return
        shown = images[: self.grid[1]].detach().clamp(0, 1).cpu()
        grid = make_grid(shown, nrow=max(1, round(len(shown) ** 0.5)))
        for logger in loggers:
            logger.experiment.add_image(f"{name}/augmented_train", grid, trainer.global_step)
