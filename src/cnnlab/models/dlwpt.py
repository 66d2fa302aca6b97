"""DlwptNet: the CIFAR-2 convnets of DLWPT ch. 8 (width, dropout, batch norm, depth, skips)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.common import make_activation, trunk_output_shape

NAME = "dlwpt_net"


class ResBlock(nn.Module):
    """``relu(bn(conv3x3(x))) + x`` with a bias-free conv, Kaiming-normal init, BN weight 0.5."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.constant_(self.batch_norm.weight, 0.5)
        nn.init.zeros_(self.batch_norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.batch_norm(self.conv(x))) + x


class ConvStage(nn.Module):
    """``conv3x3 -> [BatchNorm2d] -> activation -> [+ input] -> max-pool 2 -> [Dropout2d]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: str,
        batchnorm: bool = False,
        residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ConfigError(
                f"model {NAME}: a residual stage needs equal input and output widths "
                f"(got {in_channels} -> {out_channels})."
            )
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.act = make_activation(activation)
        self.residual = residual
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.conv(x)))
        if self.residual:
            out = out + x
        return self.dropout(self.pool(out))


class ResidualStack(nn.Module):
    """``n_blocks`` ResBlocks (one shared block when ``tied``), max-pool 2, [Dropout2d]."""

    def __init__(self, channels: int, n_blocks: int, tied: bool, dropout: float = 0.0) -> None:
        super().__init__()
        if tied:
            # As published: `n_blocks * [ResBlock(...)]` repeats ONE block, so weights are shared.
            blocks = [ResBlock(channels)] * n_blocks
        else:
            blocks = [ResBlock(channels) for _ in range(n_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.blocks(x)))


class DlwptNet(nn.Module):
    """DLWPT's ``Net`` family: conv stages with 3x3 kernels, each followed by a 2x2 max-pool.

    Stage 1 has ``width`` channels, stages 2.. ``depth`` have ``width // 2``; each is
    ``conv -> [BatchNorm2d if batchnorm] -> activation -> pool -> [Dropout2d(dropout)]``.
    ``residual`` adds the stage input to its activation before pooling on the stages whose
    width does not change (the third and later: ``NetRes``). ``n_blocks > 0`` appends that many
    residual blocks (conv without bias -> BN -> ReLU, + x) at the last stage's width and one more
    pool (``NetResDeep`` is ``depth=1, n_blocks=100``); ``tie_blocks`` reuses one block object
    as the published code does. The head is ``Linear(flat, hidden) -> activation -> Linear``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        width: int = 16,
        depth: int = 2,
        activation: str = "tanh",
        dropout: float = 0.0,
        batchnorm: bool = False,
        residual: bool = False,
        n_blocks: int = 0,
        tie_blocks: bool = True,
        hidden: int = 32,
    ) -> None:
        super().__init__()
        if width < 2:
            raise ConfigError(f"model {NAME}: model.width={width} must be >= 2.")
        if depth < 1:
            raise ConfigError(f"model {NAME}: model.depth={depth} must be >= 1 conv stage.")
        if residual and depth < 3:
            raise ConfigError(
                f"model {NAME}: model.residual=true needs model.depth >= 3 (the skip is on the "
                f"third stage, the first whose width does not change); got depth={depth}."
            )
        if n_blocks < 0:
            raise ConfigError(f"model {NAME}: model.n_blocks={n_blocks} must be >= 0.")

        stages: list[nn.Module] = []
        previous = in_channels
        for index in range(depth):
            out = width if index == 0 else width // 2
            stages.append(
                ConvStage(
                    previous,
                    out,
                    activation,
                    batchnorm=batchnorm,
                    residual=residual and index >= 2,
                    dropout=dropout,
                )
            )
            previous = out
        if n_blocks:
            stages.append(ResidualStack(previous, n_blocks, tie_blocks, dropout))
        self.features = nn.Sequential(*stages)

        flat = trunk_output_shape(self.features, in_channels, image_size, NAME).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            make_activation(activation),
            nn.Linear(hidden, num_classes),
        )
        self.num_outputs = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
