"""scikit-learn's bundled handwritten digits: 1,797 8x8 images, offline, no download."""

from __future__ import annotations

import torch

from cnnlab.data.source import Source, SourceData, TensorSplit


class DigitsSource(Source):
    """``sklearn.datasets.load_digits`` (values 0-16) scaled to uint8 ``(N, 1, 8, 8)``."""

    title = "digits"

    def load(self) -> SourceData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8)
        labels = torch.from_numpy(digits.target).long()
        names = [str(n) for n in digits.target_names]
        return SourceData({"train": TensorSplit(images[:, None], labels)}, names)
