"""An airbench-style fast CIFAR-10 network: fixed patch-whitening stem and three conv groups.

After Keller Jordan's airbench94 (https://github.com/KellerJordan/cifar10-airbench): a 2x2
convolution whose filters whiten image patches (set from the training data by
:meth:`AirbenchNet.init_from_data`, then frozen), three groups of conv -> max-pool -> BN ->
GELU -> conv -> BN -> GELU, a global max-pool and a bias-free linear layer whose logits are
scaled down. Convolutions start as identity maps on their first input channels (Dirac init),
and BatchNorm layers learn only their biases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.common import make_activation


class ConvGroup(nn.Sequential):
    """conv 3x3 -> max-pool 2 -> BN -> act -> conv 3x3 -> BN -> act (convs without bias)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: str,
        bn_momentum: float,
        bn_eps: float,
    ) -> None:
        conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        super().__init__(
            conv1,
            nn.MaxPool2d(2),
            _batchnorm(out_channels, bn_momentum, bn_eps),
            make_activation(activation),
            conv2,
            _batchnorm(out_channels, bn_momentum, bn_eps),
            make_activation(activation),
        )
        for conv in (conv1, conv2):
            # Identity on the first input channels: the group starts close to a pass-through.
            nn.init.dirac_(conv.weight[: conv.in_channels])


class AirbenchNet(nn.Module):
    """Whitening stem, ``len(widths)`` conv groups, max-pool, linear; logits x ``logit_scale``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        widths: Sequence[int] = (64, 256, 256),
        whiten_kernel: int = 2,
        whiten_eps: float = 5e-4,
        whiten_center: bool = False,
        data_init_images: int = 5000,
        activation: str = "gelu",
        bn_momentum: float = 0.4,
        bn_eps: float = 1e-12,
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        size = image_size - whiten_kernel + 1
        for _ in widths:
            size //= 2
        if size < 1:
            raise ConfigError(
                f"model=airbench: {image_size}x{image_size} images are too small for "
                f"{len(widths)} conv groups (each halves the size); use fewer model.widths or "
                "larger images."
            )
        patch_dims = in_channels * whiten_kernel**2
        self.whiten_eps = whiten_eps
        self.whiten_center = bool(whiten_center)
        # Training images the fit hands to init_from_data (ClassifierModule.on_fit_start).
        self.data_init_images = int(data_init_images)
        # Twice the patch dimensions: each whitening filter and its negative (GELU is one-sided).
        self.whiten = nn.Conv2d(in_channels, 2 * patch_dims, whiten_kernel, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)  # airbench's convs start without a shift
        self.stem_act = make_activation(activation)
        groups, width = [], 2 * patch_dims
        for out in widths:
            groups.append(ConvGroup(width, out, activation, bn_momentum, bn_eps))
            width = out
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(width, num_classes, bias=False)
        self.logit_scale = logit_scale
        self.num_outputs = num_classes

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the stem's filters to whiten the ``k x k`` patches of ``images`` (normalized, a
        random sample of the training set).

        The filters are the eigenvectors of the patch covariance scaled by
        ``1 / sqrt(eigenvalue + whiten_eps)``, and their negatives. airbench takes the second
        moment of the patches without subtracting their mean (``whiten_center=false``).
        """
        weight = self.whiten.weight
        c, k = weight.shape[1], weight.shape[2]
        patches = images.to(weight).unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        if self.whiten_center:
            patches = patches - patches.mean(0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.whiten_eps)[:, None]).float()
        filters = filters.reshape(-1, c, k, k).to(weight)
        weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem_act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


def _batchnorm(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1: only the bias (shift) is learned."""
    bn = nn.BatchNorm2d(channels, momentum=momentum, eps=eps)
    bn.weight.requires_grad_(False)
    return bn
