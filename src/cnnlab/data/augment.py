"""Batched, per-sample-random augmentation of image tensors on the training device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ConfigError


class BatchAugment(nn.Module):
    """Random crop with padding, horizontal flip and cutout, each drawn per sample.

    Works on a whole ``(N, C, H, W)`` float batch at once with tensor ops, so its cost does not
    grow with Python loops over samples. The identity when every option is off.
    ``hflip="alternate"`` is airbench's flip: each image is mirrored in every other epoch (a
    seeded half of them in even epochs, the other half in odd ones). That needs to know which
    image is which, so the in-memory loader does it (``TensorBatchLoader``), not this module.
    """

    def __init__(
        self,
        hflip: bool | str = False,
        crop_padding: int = 0,
        padding_mode: str = "reflect",
        cutout: int = 0,
    ) -> None:
        super().__init__()
        if crop_padding < 0 or cutout < 0:
            raise ConfigError(
                f"augment.crop_padding={crop_padding} and augment.cutout={cutout} must be >= 0."
            )
        if padding_mode not in ("constant", "reflect", "replicate", "circular"):
            raise ConfigError(
                f"augment.padding_mode={padding_mode!r} is not one of constant, reflect, "
                "replicate, circular."
            )
        if hflip not in (True, False, "alternate"):
            raise ConfigError(f"augment.hflip={hflip!r} must be true, false or alternate.")
        self.alternate_flip = hflip == "alternate"
        self.hflip = bool(hflip) and not self.alternate_flip
        self.crop_padding = crop_padding
        self.padding_mode = padding_mode
        self.cutout = cutout

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.crop_padding or self.cutout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, self.padding_mode)
        if self.hflip:
            images = random_hflip(images)
        if self.cutout:
            images = random_cutout(images, self.cutout)
        return images


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_crop(images: torch.Tensor, padding: int, padding_mode: str = "reflect") -> torch.Tensor:
    """Pad by ``padding`` on each side, then cut a random ``H x W`` window per sample."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode=padding_mode)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_cutout(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size x size`` square at a random centre of each sample (clipped at the border)."""
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n, 1, 1), device=images.device)
    cx = torch.randint(0, w, (n, 1, 1), device=images.device)
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images * (~inside)[:, None].to(images.dtype)
