"""StridedConvNet: convolutions that downsample by stride (no pooling), then a dense head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.common import dense_head, make_activation, per_layer, trunk_output_shape

NAME = "strided_convnet"


class StridedConvNet(nn.Module):
    """The GDL CIFAR-10 convnets as one family.

    Each entry of ``channels`` is one layer ``Conv2d(kernel_size, stride, padding)`` -> optional
    ``BatchNorm2d`` -> activation (``kernel_size``, ``stride`` and ``padding`` are one integer
    for all layers or one value per layer). The flattened features go through ``hidden`` layers
    ``Linear`` -> optional ``BatchNorm1d`` -> activation -> optional ``Dropout(dropout)``, then a
    ``Linear`` to ``num_classes``. ``activation=identity`` adds no activation layers (GDL's
    two-layer shape demo). Flatten sizes are computed from ``image_size``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (32, 32, 64, 64),
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = (1, 2, 1, 2),
        padding: int | Sequence[int] = 1,
        batchnorm: bool = True,
        activation: str = "leaky_relu",
        hidden: Sequence[int] = (128,),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not channels:
            raise ConfigError(f"model {NAME}: model.channels must list at least one layer.")
        count = len(channels)
        kernels = per_layer(kernel_size, count, "kernel_size", NAME)
        strides = per_layer(stride, count, "stride", NAME)
        paddings = per_layer(padding, count, "padding", NAME)
        make_activation(activation)  # validates the name even when no layer uses it
        use_activation = activation != "identity"

        layers: list[nn.Module] = []
        previous = in_channels
        for width, k, s, p in zip(channels, kernels, strides, paddings, strict=True):
            layers.append(nn.Conv2d(previous, width, k, stride=s, padding=p))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            if use_activation:
                layers.append(make_activation(activation))
            previous = width
        self.features = nn.Sequential(*layers)

        flat = trunk_output_shape(self.features, in_channels, image_size, NAME).numel()
        self.classifier = dense_head(flat, hidden, num_classes, activation, dropout, batchnorm)
        self.num_outputs = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
