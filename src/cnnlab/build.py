"""Build the run's objects from the composed config with ``hydra.utils.instantiate``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.module import ClassifierModule


def build(node: DictConfig | dict[str, Any] | None, what: str, **kwargs: Any) -> Any:
    """``instantiate(node)`` with plain Python containers; user errors become one message."""
    if node is None:
        return None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, CnnlabError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, (DictConfig, dict)) else "?"
        detail = str(cause or err).strip().splitlines()[-1]
        raise ConfigError(
            f"Could not build the {what} ({target}): {detail}. Check the keys of the "
            f"{what} config (`python -m cnnlab.train --cfg job` prints the composed config)."
        ) from None


def is_config(value: Any) -> bool:
    """Whether ``value`` is a Hydra config of an object (a mapping with ``_target_``)."""
    return isinstance(value, Mapping) and "_target_" in value


def built(value: Any, what: str) -> Any:
    """``value`` itself, or the object its Hydra config describes."""
    return build(dict(value), what) if is_config(value) else value


def build_model(cfg: DictConfig) -> nn.Module:
    return build(cfg.model, "model")


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module; unset image-folder facts are first read from the folder into ``cfg``."""
    from cnnlab.data.image_folder import fill_from_folder

    fill_from_folder(cfg.data)
    return build(cfg.data, "data")


def build_module(cfg: DictConfig) -> ClassifierModule:
    """The ClassifierModule with its model, optimizer and scheduler given as their configs.

    The module builds them itself and saves the configs as hyperparameters, so that
    ``ClassifierModule.load_from_checkpoint`` can rebuild it.
    """
    configs = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if cfg.get(k) else None
        for k in ("model", "optimizer", "scheduler")
    }
    # Not recursive: the configs reach the module as plain dicts, built there.
    return build(cfg.module, "module", _recursive_=False, **configs)


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    from lightning.pytorch.callbacks import LearningRateMonitor, Timer

    callbacks = [build(c, "callback") for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [build(c, "logger") for c in (cfg.get("logger") or {}).values() if c]
    if not loggers:  # the learning-rate monitor has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    max_time = cfg.trainer.get("max_time")
    if max_time is not None:
        # Lightning's own max_time stops mid-epoch, and a checkpoint taken there counts that
        # epoch as done: resume=true would skip its remaining batches. Stop at epoch ends.
        duration = OmegaConf.to_container(max_time) if OmegaConf.is_config(max_time) else max_time
        callbacks.append(Timer(duration=duration, interval="epoch"))
        overrides["max_time"] = None
    max_steps = cfg.trainer.get("max_steps")
    if max_steps not in (None, -1):
        # Lightning's own max_steps makes the loop iteration-based, whose resume from an
        # epoch-end checkpoint reruns that epoch's end (cnnlab.callbacks.StepLimit).
        from cnnlab.callbacks import StepLimit

        callbacks.append(StepLimit(max_steps))
        overrides["max_steps"] = -1
    from cnnlab.checkpoint import AtomicCheckpointIO
    from cnnlab.thread_share import follow_callbacks

    callbacks += follow_callbacks(bool(cfg.trainer.get("deterministic")))

    return build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **overrides,
    )
