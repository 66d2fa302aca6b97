"""A learnable synthetic dataset for tests and benchmarks: class prototypes plus noise."""

from __future__ import annotations

import torch

from cnnlab.data.base import InMemoryDataModule, Split


class SyntheticDataModule(InMemoryDataModule):
    """Each class is a random prototype image; samples are prototype + Gaussian pixel noise.

    ``noise`` (in units of the 0-255 pixel range) sets how hard the task is; the images and
    labels depend only on ``data_seed``.
    """

    def __init__(
        self,
        *,
        num_train: int,
        num_test: int,
        noise: float = 0.3,
        data_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train = num_train
        self.num_test = num_test
        self.noise = noise
        self.data_seed = data_seed

    def load_splits(self) -> tuple[dict[str, Split], list[str]]:
        generator = torch.Generator().manual_seed(self.data_seed)
        shape = (self.in_channels, self.image_size, self.image_size)
        prototypes = torch.rand((self.num_classes, *shape), generator=generator)

        def sample(n: int) -> Split:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
            noise = torch.randn((n, *shape), generator=generator) * self.noise
            images = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
            return images, labels

        splits = {"train": sample(self.num_train), "test": sample(self.num_test)}
        return splits, [str(i) for i in range(self.num_classes)]
