"""Per-sample transforms whose sizes are given relative to a reference image size.

CelebA's published crops (178x178 of the aligned 178x218 face) then fit any copy: on a
half-resolution copy (89x109) the same config crops 89x89. Used in ``data.transforms`` lists
like any torchvision v2 transform.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class ScaledCrop(torch.nn.Module):
    """A ``size`` crop (in pixels of a ``reference_width`` wide image) scaled to the input.

    ``random``: a random position (``RandomCrop``), else the centre (``CenterCrop``).
    """

    def __init__(self, size: list[int] | int, reference_width: int, random: bool = False) -> None:
        super().__init__()
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.reference_width = int(reference_width)
        self.random = random

    def scaled_size(self, image: Any) -> list[int]:
        _, width = F.get_size(image)
        scale = width / self.reference_width
        return [max(1, round(s * scale)) for s in self.size]

    def forward(self, image: Any) -> Any:
        size = self.scaled_size(image)
        if self.random:
            return v2.RandomCrop(size)(image)
        return F.center_crop(image, size)

    def extra_repr(self) -> str:
        return f"size={self.size}, reference_width={self.reference_width}, random={self.random}"
