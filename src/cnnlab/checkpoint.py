"""Checkpoints: written atomically, read safely, checked against the model, turned back into models.

Every checkpoint or weights file cnnlab reads goes through :func:`read_checkpoint`
(``torch.load(weights_only=True)``: tensors and plain containers only, nothing is unpickled
that could run code) and every state dict through :func:`load_matching`, which reports what
``load_state_dict(strict=False)`` reports (missing and unexpected keys) plus shape mismatches.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import nn

from cnnlab.config_upgrade import upgrade
from cnnlab.errors import CheckpointError
from cnnlab.rundir import atomic_write

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from cnnlab.module import ClassifierModule

# torch.compile wraps the model: the same weights under ``model._orig_mod.<name>``.
_COMPILED = "._orig_mod."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the same directory, fsync, then rename over the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


def read_checkpoint(path: str | Path, error: type[Exception] = CheckpointError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; unsafe or broken files: ``error``."""
    path = Path(path)
    if path.is_dir():
        raise error(
            f"{path} is a directory; ckpt_path needs a checkpoint file, e.g. "
            f"{path / 'checkpoints' / 'best.ckpt'}."
        )
    if not path.is_file():
        raise error(f"{path} does not exist. Pass the path of a checkpoint (.ckpt) file.")
    # A broken last.ckpt: the advice must not be last.ckpt itself.
    other = "best.ckpt" if path.name == "last.ckpt" else "last.ckpt or best.ckpt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a forbidden object: an unreadable file
            raise error(
                f"{path} is truncated or not a PyTorch checkpoint ({_detail(err)}). "
                f"Use another checkpoint (e.g. {other} of the run)."
            ) from None
        raise error(
            f"Refused to load {path}: it contains Python objects other than tensors and plain "
            f"containers ({_detail(err)}), and loading them could run "
            "arbitrary code. Only load checkpoints written by cnnlab or other trusted sources."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise error(
            f"{path} is truncated or not a PyTorch checkpoint ({err}). "
            f"Use another checkpoint (e.g. {other} of the run)."
        ) from None


def load_matching(module: nn.Module, state_dict: dict[str, Any], ignore_prefix: str = "") -> str:
    """Load the entries of ``state_dict`` that fit ``module``; describe the others ('' if none).

    Names match with or without torch.compile's wrapper; keys starting with ``ignore_prefix``
    (e.g. a classifier head that is replaced) are neither loaded nor reported.
    """
    own = module.state_dict()
    own_name = {k.replace(_COMPILED, "."): k for k in own}
    state, misshapen = {}, []
    for key, value in state_dict.items():
        name = own_name.get(key.replace(_COMPILED, "."), key)
        if ignore_prefix and name.startswith(ignore_prefix):
            continue
        if name in own and getattr(value, "shape", None) != own[name].shape:
            shape = tuple(getattr(value, "shape", ()))
            misshapen.append(f"{name} {shape} vs {tuple(own[name].shape)}")
        else:
            state[name] = value
    report = module.load_state_dict(state, strict=False)
    skipped = {m.split(" ")[0] for m in misshapen}
    missing = [
        k
        for k in report.missing_keys
        if k not in skipped and not (ignore_prefix and k.startswith(ignore_prefix))
    ]
    parts = [
        f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for label, keys in (
            ("missing", sorted(missing)),
            ("unexpected", sorted(report.unexpected_keys)),
            ("shape (checkpoint vs model)", sorted(misshapen)),
        )
        if keys
    ]
    return "; ".join(parts)


def check_fits(module: nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Load the checkpoint's weights into ``module`` or say which keys and shapes differ."""
    problems = load_matching(module, checkpoint.get("state_dict", {}))
    if problems:
        raise CheckpointError(
            f"Checkpoint {path} does not match the model config; {problems}. Use the model/data "
            "settings it was trained with (its run's .hydra/config.yaml)."
        )


def saved_config(checkpoint: dict[str, Any], path: str | Path, overrides: Any = None) -> DictConfig:
    """The run config cnnlab.train stored in the checkpoint, ``overrides`` merged over it.

    A config of an earlier cnnlab is read in today's keys (:mod:`cnnlab.config_upgrade`).
    """
    from omegaconf import OmegaConf

    from cnnlab.config import register_resolvers

    config = (checkpoint.get("cnnlab") or {}).get("config")
    if not config:
        raise CheckpointError(
            f"{path} has no cnnlab config inside; it was not written by cnnlab.train."
        )
    upgrade(config)
    register_resolvers()
    return OmegaConf.merge(OmegaConf.create(config), overrides or {})


def module_from(checkpoint: dict[str, Any], cfg: DictConfig, path: str | Path) -> ClassifierModule:
    """The module ``cfg`` describes with the checkpoint's weights and state, in eval mode."""
    from cnnlab.build import build_module

    module = build_module(cfg)
    check_fits(module, checkpoint, path)
    module.on_load_checkpoint(checkpoint)
    module.run_config = checkpoint["cnnlab"]["config"]
    return module.eval()


def load_module(path: str | Path, overrides: Any = None) -> ClassifierModule:
    """The trained :class:`~cnnlab.module.ClassifierModule` of a cnnlab checkpoint, in eval mode.

    ``overrides`` (a dict or DictConfig) is merged over the saved run config, e.g.
    ``{"module": {"eval_norm": "batch"}}``. The weights are read with ``weights_only=True``.
    """
    checkpoint = read_checkpoint(path)
    return module_from(checkpoint, saved_config(checkpoint, path, overrides), path)


def load_model(path: str | Path) -> nn.Module:
    """The trained network (an ``nn.Module`` in eval mode, on the CPU) of a cnnlab checkpoint."""
    return load_module(path).model


def _detail(err: Exception) -> str:
    """The line of torch's weights-only error that names the problem."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line]
    return (named or lines or [type(err).__name__])[0].split(". Please use")[0]
