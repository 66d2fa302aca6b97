"""Helpers shared by the architectures: activations by name and computed flatten sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its config name (``relu``, ``tanh``, ...)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"model.activation={name!r} is not known; use one of {sorted(ACTIVATIONS)}."
        ) from None


def dense_head(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    activation: str,
    dropout: float = 0.0,
    batchnorm: bool = False,
) -> nn.Sequential:
    """Flatten -> [Linear -> BatchNorm1d? -> activation -> Dropout?] per hidden size -> Linear.

    ``activation: identity`` adds no activation layer (the GDL ConvNet has none).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if batchnorm:
            layers.append(nn.BatchNorm1d(size))
        if activation != "identity":
            layers.append(make_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def trunk_output_shape(
    trunk: nn.Module, in_channels: int, image_size: int, model_name: str
) -> torch.Size:
    """Shape (without batch) of ``trunk`` applied to one image, with a clear error if too small."""
    probe = torch.zeros(1, in_channels, image_size, image_size)
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            out = trunk(probe)
    except RuntimeError as err:
        raise ConfigError(
            f"model {model_name} cannot take {in_channels}x{image_size}x{image_size} inputs "
            f"({_first_line(err)}). The input is too small for its convolutions/poolings or "
            "has the wrong number of channels: use a dataset with larger images, or fewer "
            "stages/poolings (e.g. a smaller model.depth or channel list)."
        ) from None
    finally:
        trunk.train(was_training)
    if min(out.shape[2:], default=1) < 1:
        raise ConfigError(
            f"model {model_name} reduces {image_size}x{image_size} inputs to nothing; use "
            "fewer poolings or larger images."
        )
    return out.shape[1:]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting shared (tied) tensors once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def per_layer(value: int | Sequence[int], count: int, key: str, model_name: str) -> list[int]:
    """``value`` for each of ``count`` layers: one int repeated, or a list of exactly ``count``."""
    if isinstance(value, int):
        return [value] * count
    values = [int(v) for v in value]
    if len(values) != count:
        raise ConfigError(
            f"model {model_name}: model.{key}={values} has {len(values)} entries but the model "
            f"has {count} layers; give one value per layer or a single integer."
        )
    return values
