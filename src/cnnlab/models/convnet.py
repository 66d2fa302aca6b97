"""ConvNet: stages of conv -> [batchnorm] -> activation -> max-pool, then fully connected layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.models.common import dense_head, make_activation, trunk_output_shape


class ConvNet(nn.Module):
    """A plain convolutional classifier.

    Each entry of ``channels`` is one stage: ``Conv2d(kernel_size, padding)`` ->
    optional ``BatchNorm2d`` -> activation -> ``MaxPool2d(pool)`` (no pooling when ``pool`` is
    1). The flattened features go through ``hidden`` fully connected layers with the same
    activation and ``dropout`` before each hidden-to-next projection, then to ``num_classes``.
    The MNIST CNN of the MLPT text is ``channels=[32, 64], kernel_size=5, padding=2,
    hidden=[1024], dropout=0.5``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        padding: int = 1,
        pool: int = 2,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers.append(nn.Conv2d(previous, width, kernel_size, padding=padding))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(make_activation(activation))
            if pool > 1:
                layers.append(nn.MaxPool2d(pool))
            previous = width
        self.features = nn.Sequential(*layers)
        flat = trunk_output_shape(self.features, in_channels, image_size, "convnet").numel()
        self.classifier = dense_head(flat, hidden, num_classes, activation, dropout)
        self.num_outputs = num_classes

    def forward(self, x):
        return self.classifier(self.features(x))
