"""Test-time augmentation: a batch's logits averaged over its mirror image and shifted copies
(``module.eval_flip_tta``, ``module.eval_translate_tta``; airbench94's evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def tta_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flip: bool, translate: int
) -> torch.Tensor:
    """Logits of ``x``; with TTA, averaged over its mirror image and shifted copies.

    airbench's form: half the weight on the image itself, a quarter on each copy shifted by
    ``translate`` pixels diagonally one way and the other (reflect-padded); with ``flip``, each
    view's logits are averaged with its mirror image's.
    """
    views = [x]
    if translate:
        padded = F.pad(x, (translate,) * 4, mode="reflect")
        h, w = x.shape[-2:]
        views += [padded[..., :h, :w], padded[..., 2 * translate :, 2 * translate :]]
    logits = [forward(v) for v in views]
    if flip:
        logits = [(z + forward(v.flip(-1))) / 2 for z, v in zip(logits, views, strict=True)]
    if len(logits) == 1:
        return logits[0]
    return logits[0] / 2 + (logits[1] + logits[2]) / 4
