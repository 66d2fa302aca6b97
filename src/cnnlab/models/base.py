"""The model contract: what :class:`~cnnlab.module.ClassifierModule` needs from a network.

A model is any ``nn.Module`` built by Hydra from ``conf/model/<name>.yaml`` (keyword arguments;
``in_channels``, ``num_classes`` and ``image_size`` come from the data config) whose
``forward`` maps a batch of images ``(N, C, H, W)`` to logits ``(N, num_outputs)``. Models
raise :class:`~cnnlab.errors.ConfigError` naming the key for settings that cannot work together.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import torch

from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)


@runtime_checkable
class ImageClassifier(Protocol):
    """A network returning one logit per class, or ONE logit for a binary task (BCE)."""

    #: the width of the logits: ``num_classes``, or 1 for a two-class model trained with BCE
    num_outputs: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DataInitialized(Protocol):
    """Optional: a model whose initialization needs training images (airbench's whitening).

    At the start of a fresh fit (not a resumed one) the module calls
    ``init_from_data(images)`` with ``data_init_images`` normalized training images drawn at
    random (the data module's ``sample_train_images``); the result must live in the model's
    state dict.
    """

    data_init_images: int

    def init_from_data(self, images: torch.Tensor) -> None: ...


def init_from_training_data(model: Any, datamodule: Any) -> None:
    """Give a :class:`DataInitialized` model its ``data_init_images`` training images."""
    if not isinstance(model, DataInitialized):
        return
    if not hasattr(datamodule, "sample_train_images"):
        raise ConfigError(
            f"model {type(model).__name__} initializes itself from training images, which the "
            f"data module {type(datamodule).__name__} cannot provide; use cnnlab's "
            "ClassificationDataModule, or give yours a sample_train_images(count) method."
        )
    images = datamodule.sample_train_images(int(model.data_init_images))
    model.init_from_data(images)
    log.info("%s initialized from %d training images.", type(model).__name__, len(images))
