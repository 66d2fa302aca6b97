"""The checks that stop a run whose numbers became NaN or infinite, each naming where.

:class:`~cnnlab.module.ClassifierModule` calls them where it reads the values anyway (the queued
training losses, the epoch's mean loss, the weights before a checkpoint), so they cost no extra
device synchronisation.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import NonFiniteLossError

ADVICE = (
    "Lower optimizer.lr, enable gradient clipping (trainer.gradient_clip_val) or check the input "
    "normalization."
)


def check_step_losses(losses: torch.Tensor, steps: list[int], epoch: int) -> None:
    """Name the first training step whose loss was not finite: ``losses`` of consecutive
    batches, ``steps`` the global step before each batch's optimizer step."""
    bad = ~torch.isfinite(losses)
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"Training loss became {losses[index].item()} at step {steps[index] + 1} "
            f"(epoch {epoch}). {ADVICE}"
        )


def check_epoch_loss(loss: torch.Tensor, epoch: int, step: int) -> None:
    """The epoch's mean training loss is finite."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"Training loss became {loss.item()} in epoch {epoch} (step {step}). {ADVICE}"
        )


def check_weights(model: nn.Module, epoch: int, step: int) -> None:
    """Before a checkpoint: refusing to save keeps the last good last.ckpt/best.ckpt on disk."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise NonFiniteLossError(
            f"The weights became NaN or infinite by step {step} (epoch {epoch}); no checkpoint "
            f"was written over the last good one. {ADVICE}"
        )
