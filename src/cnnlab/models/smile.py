"""SmileCNN: MLPT ch. 14's CelebA classifier, conv stages ending in global average pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.common import make_activation, trunk_output_shape

NAME = "smile_cnn"


class SmileCNN(nn.Module):
    """Conv stages, global average pooling and one linear layer.

    Each entry of ``channels`` is ``Conv2d(3x3, padding 1) -> activation``; the first ``pooled``
    stages are followed by a 2x2 max-pool, the first ``dropout_stages`` of those also by
    ``Dropout(dropout)``. A global average pool and ``Linear(channels[-1], outputs)`` follow.
    With two classes the model has ONE output (a logit for BCE-with-logits, as in the text);
    otherwise one logit per class.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        pooled: int = 3,
        dropout: float = 0.5,
        dropout_stages: int = 2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not channels:
            raise ConfigError(f"model {NAME}: model.channels must list at least one stage.")
        if not 0 <= pooled <= len(channels) or not 0 <= dropout_stages <= len(channels):
            raise ConfigError(
                f"model {NAME}: model.pooled={pooled} and model.dropout_stages={dropout_stages} "
                f"must be between 0 and the number of stages ({len(channels)})."
            )
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, padding=1), make_activation(activation)]
            if index < pooled:
                layers.append(nn.MaxPool2d(2))
            if dropout and index < dropout_stages:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        flat = trunk_output_shape(self.features, in_channels, image_size, NAME).numel()
        self.num_outputs = 1 if num_classes == 2 else num_classes
        self.fc = nn.Linear(flat, self.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
