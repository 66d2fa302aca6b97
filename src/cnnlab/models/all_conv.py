"""AllConvNet: the NB notebook's all-convolutional stride-2 stack, flattened into logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.common import trunk_output_shape

NAME = "all_conv_net"


def conv_block(in_channels: int, out_channels: int, kernel_size: int, act: bool) -> nn.Sequential:
    """``Conv2d(stride 2, padding k // 2) -> [ReLU] -> BatchNorm2d`` (BN after the activation)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2)
    ]
    if act:
        layers.append(nn.ReLU())
    layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


class AllConvNet(nn.Module):
    """Blocks that halve the resolution, the last one without ReLU, then ``Flatten``.

    There is no dense head: the last block must leave ``num_classes`` channels at 1x1, so the
    last entry of ``channels`` is the number of classes (the presets write it as
    ``${data.num_classes}``) and the input must shrink to 1x1 (at most ``2 ** len(channels)``
    pixels wide). ``dropout_after=k`` inserts ``Dropout(dropout)`` after the first ``k`` blocks
    (the cats-vs-dogs net has it after block 4).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (4, 8, 16, 32, 64, 10),
        kernel_size: int = 3,
        dropout: float = 0.0,
        dropout_after: int | None = None,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or channels[-1] != num_classes:
            raise ConfigError(
                f"model {NAME}: the last entry of model.channels={channels} must equal the "
                f"number of classes ({num_classes}), because the flattened last block is the "
                "output; write it as ${data.num_classes}."
            )
        if dropout and (dropout_after is None or not 1 <= dropout_after < len(channels)):
            raise ConfigError(
                f"model {NAME}: model.dropout={dropout} needs model.dropout_after between 1 and "
                f"{len(channels) - 1} (the number of blocks before the Dropout); got "
                f"{dropout_after}."
            )
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            layers.append(conv_block(previous, width, kernel_size, act=index < len(channels) - 1))
            if dropout and index + 1 == dropout_after:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers.append(nn.Flatten())
        self.layers = nn.Sequential(*layers)
        flat = trunk_output_shape(self.layers, in_channels, image_size, NAME).numel()
        if flat != num_classes:
            side = round((flat / num_classes) ** 0.5)
            raise ConfigError(
                f"model {NAME}: {len(channels)} stride-2 blocks reduce {image_size}x{image_size} "
                f"inputs to {side}x{side}, so the output has {flat} values instead of "
                f"{num_classes} logits. Use images of at most {2 ** len(channels)} pixels, or add "
                "blocks to model.channels."
            )
        self.num_outputs = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
