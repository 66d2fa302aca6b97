"""ResNet18Transfer: torchvision's ResNet-18 with a new head, optionally ImageNet-initialized."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from cnnlab.checkpoint import load_matching, read_checkpoint
from cnnlab.errors import ConfigError

NAME = "resnet18"
DOWNLOAD_TIMEOUT_S = 30.0


class ResNet18Transfer(nn.Module):
    """ResNet-18 whose ``fc`` is replaced by ``Linear(512, num_classes)``.

    ``pretrained`` loads torchvision's ImageNet weights (``ResNet18_Weights.IMAGENET1K_V1``,
    downloaded once into the torch hub cache); ``weights_path`` loads the same state dict from a
    local ``.pth`` file instead (no download). ``freeze_backbone`` trains only the new head: all
    other parameters get ``requires_grad=False`` and the backbone's BatchNorm layers stay in eval
    mode, so their running statistics do not change either. Inputs with other than 3 channels
    get a new first convolution (only without pretrained weights).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        pretrained: bool = False,
        weights_path: str | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        net = resnet18(weights=None)
        if weights_path:
            _load_backbone(net, _load_local(Path(weights_path)), str(weights_path))
        elif pretrained:
            _load_backbone(net, _download_imagenet(), ResNet18_Weights.IMAGENET1K_V1.url)
        if in_channels != 3:
            if weights_path or pretrained:
                raise ConfigError(
                    f"model {NAME}: ImageNet weights expect 3-channel images but the data has "
                    f"in_channels={in_channels}; convert to 3 channels (e.g. a Grayscale(3) "
                    "transform) or set model.pretrained=false."
                )
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if freeze_backbone:
            for param in net.parameters():
                param.requires_grad = False
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        self.net = net
        self.freeze_backbone = freeze_backbone
        self.num_outputs = num_classes
        self.train()

    def train(self, mode: bool = True) -> ResNet18Transfer:
        """Set the training mode, keeping a frozen backbone's BatchNorm layers in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _download_imagenet() -> dict[str, Any]:
    """torchvision's ImageNet state dict (cached), or a ConfigError naming the offline fix."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an unreachable host fails instead of hanging
    try:
        # weights_only: a tampered file in torch's cache must not run code (the hash is checked
        # at download only)
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as err:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ConfigError(
            f"model {NAME}: refused to load {cached}: it holds Python objects other than "
            f"tensors ({str(err).splitlines()[0][:120]}), and loading them could run code. "
            "Delete it to download the weights again, or pass model.weights_path=<file.pth>."
        ) from None
    except (OSError, RuntimeError) as err:  # URLError, timeouts, bad hash are OSError/RuntimeError
        raise ConfigError(
            f"model {NAME}: model.pretrained=true could not download the ImageNet weights from "
            f"{weights.url} ({str(err).strip() or type(err).__name__}). Without internet, put "
            "that file on this machine and pass model.weights_path=<file.pth> (a ResNet-18 "
            "state dict loaded locally), or train from scratch with model.pretrained=false."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_local(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"model {NAME}: model.weights_path={path} does not exist; give the path of a "
            "ResNet-18 state dict (.pth), e.g. torchvision's resnet18-f37072fd.pth."
        )
    state = read_checkpoint(path, error=ConfigError)
    if not isinstance(state, dict):
        raise ConfigError(f"model {NAME}: model.weights_path={path} is not a state dict.")
    return state


def _load_backbone(net: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load every backbone tensor from ``state`` (the new ``fc`` head is not loaded)."""
    problems = load_matching(net, state, ignore_prefix="fc.")
    if problems:
        raise ConfigError(
            f"model {NAME}: the weights from {source} are not a torchvision ResNet-18 state "
            f"dict ({problems})."
        )
