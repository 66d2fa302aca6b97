"""Build the run's objects from the composed config with ``hydra.utils.instantiate``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError, ConfigError
from cnnlab.module import ClassifierModule


def build(node: DictConfig | None, what: str, **kwargs: Any) -> Any:
    """``instantiate(node)`` with plain Python containers; user errors become one message."""
    if node is None:
        return None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, CnnlabError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        detail = str(cause or err).strip().splitlines()[-1]
        raise ConfigError(
            f"Could not build the {what} ({target}): {detail}. Check the keys of the "
            f"{what} config (`python -m cnnlab.train --cfg job` prints the composed config)."
        ) from None


def build_model(cfg: DictConfig) -> nn.Module:
    return build(cfg.model, "model")


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return build(cfg.data, "data")


def build_module(cfg: DictConfig, model: nn.Module) -> ClassifierModule:
    return build(
        cfg.module,
        "module",
        model=model,
        optimizer=build(cfg.optimizer, "optimizer"),
        scheduler=build(cfg.scheduler, "scheduler"),
    )


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    from lightning.pytorch.callbacks import LearningRateMonitor, Timer
    from omegaconf import OmegaConf

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
    from cnnlab.checkpoint_io import AtomicCheckpointIO

    return build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **overrides,
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``; a pickle that runs code is refused."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory; ckpt_path needs a checkpoint file, e.g. "
            f"{path / 'checkpoints' / 'best.ckpt'}."
        )
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Pass ckpt_path=<file.ckpt>.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refused to load {path}: it contains Python objects other than tensors and plain "
            f"containers ({str(err).strip().splitlines()[0]}), and loading them could run "
            "arbitrary code. Only load checkpoints written by cnnlab or other trusted sources."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        other = "best.ckpt" if path.name == "last.ckpt" else "last.ckpt or best.ckpt"
        raise CheckpointError(
            f"Checkpoint {path} is truncated or not a PyTorch checkpoint ({err}). "
            f"Use another checkpoint (e.g. {other} of the run)."
        ) from None


def state_dict_mismatch(module: nn.Module, state_dict: dict[str, Any]) -> str:
    """Missing, unexpected and differently shaped keys of ``state_dict``; empty if it fits."""
    # torch.compile wraps the model; its weights are the same under a prefixed name.
    theirs = {k.replace("._orig_mod.", "."): v for k, v in state_dict.items()}
    own = {k.replace("._orig_mod.", "."): v for k, v in module.state_dict().items()}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    mismatched = sorted(
        f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(theirs)
        if hasattr(theirs[k], "shape") and theirs[k].shape != own[k].shape
    )
    parts = [
        f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape (checkpoint vs model)", mismatched),
        )
        if keys
    ]
    return "; ".join(parts)


def load_state_into(module: nn.Module, state_dict: dict[str, Any], path: str | Path) -> None:
    """Load weights, or explain which keys and shapes differ from the model config."""
    mismatch = state_dict_mismatch(module, state_dict)
    if mismatch:
        raise CheckpointError(
            f"Checkpoint {path} does not match the model config; {mismatch}. Use the "
            "model/data settings the checkpoint was trained with (its run's .hydra/config.yaml)."
        )
    # Called before any torch.compile (configure_model), so plain names are the module's own.
    module.load_state_dict({k.replace("._orig_mod.", "."): v for k, v in state_dict.items()})
