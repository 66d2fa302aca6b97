"""A learnable synthetic dataset for tests and benchmarks: class prototypes plus noise."""

from __future__ import annotations

import torch

from cnnlab.data.source import Source, SourceData, TensorSplit


class SyntheticSource(Source):
    """Each class is a random prototype image; samples are prototype + Gaussian pixel noise.

    ``noise`` (in units of the 0-255 pixel range) sets how hard the task is; the images and
    labels depend only on ``data_seed``.
    """

    title = "synthetic"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        num_train: int = 512,
        num_test: int = 128,
        noise: float = 0.3,
        data_seed: int = 0,
    ) -> None:
        self.shape = (int(in_channels), int(image_size), int(image_size))
        self.num_classes = int(num_classes)
        self.num_train = num_train
        self.num_test = num_test
        self.noise = noise
        self.data_seed = data_seed

    def load(self) -> SourceData:
        generator = torch.Generator().manual_seed(self.data_seed)
        prototypes = torch.rand((self.num_classes, *self.shape), generator=generator)

        def sample(n: int) -> TensorSplit:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
            noise = torch.randn((n, *self.shape), generator=generator) * self.noise
            images = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
            return TensorSplit(images, labels)

        splits = {"train": sample(self.num_train), "test": sample(self.num_test)}
        return SourceData(splits, [str(i) for i in range(self.num_classes)])
