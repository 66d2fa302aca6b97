"""Optimizer parameter groups and learning-rate schedulers built from their configs.

The groups follow torchvision's ``set_weight_decay`` (classification references) and nanoGPT's
decay split: normalization-layer parameters and biases may get their own weight decay, and the
normalization layers their own learning-rate multiplier.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from cnnlab.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# Keys of a scheduler config that are Lightning's (how to step it), not the scheduler's.
LIGHTNING_SCHEDULER_KEYS = ("interval", "frequency", "monitor", "strict", "name")


def parameter_groups(
    model: nn.Module,
    lr: float | None,
    weight_decay: float,
    norm_weight_decay: float | None = None,
    bias_weight_decay: float | None = None,
    norm_lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Trainable parameters in up to three groups: the rest, normalization layers, other biases.

    ``norm_weight_decay`` / ``bias_weight_decay``: the weight decay of normalization-layer
    parameters / of the other biases (``None``: the optimizer's ``weight_decay``).
    ``norm_lr_scale`` multiplies the normalization layers' learning rate and divides their
    weight decay, so that their decay per step (lr x weight decay) is unchanged. One group when
    no option is in use.
    """
    if norm_weight_decay is None and bias_weight_decay is None and norm_lr_scale == 1:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    norm, bias, rest = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, NORM_TYPES):
                norm.append(param)
            elif name == "bias" and bias_weight_decay is not None:
                bias.append(param)
            else:
                rest.append(param)
    norm_decay = weight_decay if norm_weight_decay is None else norm_weight_decay
    norm_group: dict[str, Any] = {"params": norm, "weight_decay": norm_decay / norm_lr_scale}
    if norm_lr_scale != 1:
        if lr is None:
            raise ConfigError("module.norm_lr_scale needs optimizer.lr in the optimizer config.")
        norm_group["lr"] = lr * norm_lr_scale
    groups = [{"params": rest}, norm_group]
    if bias:
        groups.append({"params": bias, "weight_decay": bias_weight_decay})
    return groups


def make_optimizer(factory: OptimizerFactory, groups: list[dict[str, Any]]) -> Any:
    """``factory(params=groups)``; an unsupported fused kernel becomes a ConfigError."""
    try:
        return factory(params=groups)
    except RuntimeError as err:
        if "fused" not in str(err):
            raise
        raise ConfigError(
            f"optimizer.fused=true is not supported here ({err}). Set optimizer.fused=false "
            "to use PyTorch's per-parameter implementation."
        ) from err


def make_scheduler(
    config: Mapping[str, Any], optimizer: torch.optim.Optimizer, total_steps: Callable[[], int]
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` dict from a scheduler config (its keys and Lightning's).

    Two fills a config cannot write: ``total_steps: null`` becomes the run's number of optimizer
    steps, and a one-cycle ``max_lr`` keeps the lr ratios between parameter groups.
    """
    options = {k: v for k, v in config.items() if k in LIGHTNING_SCHEDULER_KEYS}
    arguments = {k: v for k, v in config.items() if k not in LIGHTNING_SCHEDULER_KEYS}
    if "total_steps" in arguments and arguments["total_steps"] is None:
        arguments["total_steps"] = int(total_steps())
    max_lr = arguments.get("max_lr")
    if isinstance(max_lr, (int, float)) and len(optimizer.param_groups) > 1:
        base = optimizer.param_groups[0]["lr"]
        arguments["max_lr"] = [max_lr * g["lr"] / base for g in optimizer.param_groups]
    factory = instantiate({**arguments, "_partial_": True}, _convert_="all")
    return {"scheduler": factory(optimizer), **options}


def configure_optimizers(
    model: nn.Module,
    factory: OptimizerFactory,
    scheduler: Mapping[str, Any],
    total_steps: Callable[[], int],
    **group_options: Any,
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns: the optimizer over
    :func:`parameter_groups` (``group_options``: the norm/bias decay and lr knobs), with the
    scheduler when ``scheduler`` has a ``_target_``."""
    lr = optimizer_keyword(factory, "lr")
    weight_decay = optimizer_keyword(factory, "weight_decay", 0.0)
    groups = parameter_groups(model, lr=lr, weight_decay=weight_decay, **group_options)
    optimizer = make_optimizer(factory, groups)
    if not scheduler.get("_target_"):
        return optimizer
    scheduler_setup = make_scheduler(scheduler, optimizer, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": scheduler_setup}


def optimizer_keyword(factory: OptimizerFactory, name: str, default: Any = None) -> Any:
    """An argument of the optimizer's partial (e.g. its ``lr``), or ``default``."""
    if isinstance(factory, functools.partial):
        return factory.keywords.get(name, default)
    return default
