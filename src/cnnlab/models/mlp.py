"""MLP: flatten the image, then fully connected hidden layers and a linear output layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.common import dense_head


class MLP(nn.Module):
    """A multilayer perceptron on flattened pixels.

    Each entry of ``hidden`` is one layer: ``Linear`` -> optional ``BatchNorm1d`` -> activation
    -> optional ``Dropout(dropout)``; a last ``Linear`` gives ``num_classes`` logits. GDL's
    CIFAR-10 MLP is ``hidden=[200, 150]``; DLWPT's CIFAR-2 baseline is ``hidden=[512]`` with
    ``activation=tanh``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        hidden: Sequence[int] = (200, 150),
        activation: str = "relu",
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if any(int(size) < 1 for size in hidden):
            raise ConfigError(f"model mlp: model.hidden={list(hidden)} must be positive sizes.")
        self.layers = dense_head(
            in_channels * image_size * image_size,
            hidden,
            num_classes,
            activation,
            dropout,
            batchnorm,
        )
        self.num_outputs = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
