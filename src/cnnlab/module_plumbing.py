"""Plumbing under :class:`~cnnlab.module.ClassifierModule`: a cheap training step, resumable RNG.

A small model's training step on a CPU costs tens of microseconds of arithmetic, and Lightning's
per-step Python (hook dispatch, ``self.log``, metric updates, batch transfer) can cost as much
again. :class:`FastStepModule` removes what it can without changing any number:

- ``__setattr__``: Lightning sets ``_current_fx_name`` around every hook call (some 40 times a
  step); ``nn.Module.__setattr__``'s parameter/module/buffer checks make that ~3 us each.
- ``transfer_batch_to_device``: an ``(images, labels)`` pair moves as two tensors instead of a
  generic collection walk.
- Deferred metrics: :meth:`FastStepModule.defer` queues a metric update as tensors; the queue is
  folded in with one batched update on the steps Lightning writes to its loggers
  (:meth:`FastStepModule.step_is_logged`), at the epoch end, and before every checkpoint
  (``state_dict``), so no other step reads a value back from the device.

:func:`rng_states` / :func:`restore_rng_states` save the Python, NumPy and torch generators in
checkpoints as plain containers (``weights_only`` loadable), so a resumed run draws the same
random numbers (dropout masks, augmentation) as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn


class FastStepModule(L.LightningModule):
    """A LightningModule whose per-step overhead is as small as Lightning allows.

    Subclasses keep their network in ``self.model``. ``channels_last=True`` keeps its 4-D
    weights and the image batches in ``torch.channels_last`` memory format (faster convolutions
    on tensor-core GPUs and some CPUs); ``compile=True`` wraps it with ``torch.compile``.
    Checkpoints carry the RNG states, restored when a fit resumes. ``keep_training_rng=True``
    (for an evaluation that draws random numbers, e.g. active dropout) saves them when a
    validation or test epoch starts and puts them back when it ends, so training draws as if
    no evaluation had run; subclasses overriding the epoch-end hooks call ``super()`` first.
    """

    model: nn.Module

    def __init__(
        self, channels_last: bool = False, compile: bool = False, keep_training_rng: bool = False
    ) -> None:
        super().__init__()
        self.channels_last, self.compile = bool(channels_last), bool(compile)
        self.keep_training_rng = keep_training_rng
        self._training_rng: dict[str, Any] | None = None
        # metric attribute name -> queued argument tuples of its update()
        self._deferred: dict[str, list[tuple[torch.Tensor, ...]]] = {}
        # metric -> the global step of each queued batch (several with gradient accumulation)
        self._queued_steps: dict[str, list[int]] = {}
        self.register_state_dict_pre_hook(_flush_before_state_dict)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if type(batch) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in batch):
            non_blocking = device.type not in ("cpu", "mps")  # as Lightning's own transfer
            return type(batch)(t.to(device, non_blocking=non_blocking) for t in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def configure_model(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.compile and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    # ---- evaluation that draws random numbers (keep_training_rng) ----------------------------
    def on_validation_epoch_start(self) -> None:
        self._training_rng = rng_states() if self.keep_training_rng else None

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        # before the epoch's checkpoints: they carry the training streams, not evaluation's
        if self._training_rng is not None:
            restore_rng_states(self._training_rng)
            self._training_rng = None

    on_test_epoch_end = on_validation_epoch_end

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only a resumed fit continues the random streams (not eval or load_from_checkpoint).
        states = checkpoint.get("rng_states") or checkpoint.get("cnnlab", {}).get("rng")
        if states and self._trainer is not None and self.trainer.state.fn == "fit":
            restore_rng_states(states)

    def defer(self, metric: str, *args: torch.Tensor) -> None:
        """Queue ``getattr(self, metric).update(*args)`` until :meth:`flush_deferred`."""
        self._deferred.setdefault(metric, []).append(args)
        self._queued_steps.setdefault(metric, []).append(self.trainer.global_step)

    def flush_deferred(self) -> None:
        """Apply the queued updates, one concatenated update per metric.

        A scalar per step (a loss) becomes a vector: ``MeanMetric`` then averages over steps
        exactly as one update per step would. Each metric's values are first handed to
        :meth:`check_deferred`, which sees every queued step without a device sync per step.
        """
        for metric, queued in self._deferred.items():
            if queued:
                columns = zip(*queued, strict=True)
                values = [torch.cat([torch.atleast_1d(t) for t in column]) for column in columns]
                self.check_deferred(metric, values[0], self._queued_steps[metric])
                getattr(self, metric).update(*values)
        self._deferred, self._queued_steps = {}, {}

    def check_deferred(self, metric: str, values: torch.Tensor, steps: list[int]) -> None:
        """Override to check ``values`` (the first update argument of each queued batch, whose
        global steps before its optimizer step are ``steps``) before they join ``metric``."""

    def step_is_logged(self) -> bool:
        """Whether Lightning writes step metrics to the loggers after this training step.

        The condition of Lightning's ``_LoggerConnector.should_update_logs`` (private there).
        """
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if not every:
            return False
        return (
            (trainer.global_step + 1) % every == 0
            or trainer.should_stop
            or bool(trainer.fast_dev_run)
        )


def _flush_before_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    """Checkpoints hold the epoch's training metrics up to the current step."""
    module.flush_deferred()


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Normalization layers use the batch's statistics, leaving their running ones untouched.

    Inside, every layer with running statistics normalizes as in training but neither reads nor
    updates ``running_mean``/``running_var``/``num_batches_tracked``; other layers (dropout)
    keep their mode.
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]
    saved = [(m.training, m.track_running_stats) for m in layers]
    for m in layers:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(layers, saved, strict=True):
            m.training, m.track_running_stats = training, track


@contextmanager
def evaluated_as(model: nn.Module, norm: str = "running", dropout: bool = False) -> Iterator[None]:
    """``norm="batch"``: :func:`batch_statistics`; ``dropout``: :func:`active_dropout`."""
    with ExitStack() as modes:
        if norm == "batch":
            modes.enter_context(batch_statistics(model))
        if dropout:
            modes.enter_context(active_dropout(model))
        yield


@contextmanager
def active_dropout(model: nn.Module) -> Iterator[None]:
    """Dropout layers drop as in training; every other layer keeps its mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    saved = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m, training in zip(layers, saved, strict=True):
            m.training = training


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain containers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo :func:`rng_states`: a resumed run draws the same random numbers (dropout, ...)."""
    random.setstate(_tuples(states["python"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
