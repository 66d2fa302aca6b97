"""Training callbacks of cnnlab (those Lightning does not ship)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)


class StepLimit(L.Callback):
    """Stop training once ``max_steps`` optimizer steps are done: ``trainer.max_steps``, applied
    by cnnlab (``build_trainer``) instead of Lightning.

    Lightning counts a run with ``max_steps`` as iteration-based, and resuming one from an
    epoch-end checkpoint then runs that epoch's end a second time (Lightning#19617): the epoch
    hooks again on emptied metrics, a second scheduler step. Stopping through ``should_stop``
    keeps the loop epoch-based; Lightning validates and checkpoints the step it stops at. As
    with Lightning's limit, it wins over ``min_epochs``; a run resumed at the limit trains no
    further batch.
    """

    def __init__(self, max_steps: int) -> None:
        self.max_steps = int(max_steps)

    def reached(self, trainer: L.Trainer) -> bool:
        return trainer.global_step >= self.max_steps

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        # resumed from a checkpoint taken at (or after) the limit: train no further batch
        if self.reached(trainer):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.reached(trainer):
            trainer.should_stop = True
            # as Lightning's max_steps: the limit wins over min_epochs / min_steps
            trainer.fit_loop.min_epochs = None
            trainer.fit_loop.epoch_loop.min_steps = None


def ends_epoch(trainer: L.Trainer) -> bool:
    """Whether this training batch ends its epoch or the fit (a ``StepLimit``'s step): the
    validation and the epoch-end checkpoints follow, so a mid-epoch one would only be older."""
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or any(
        isinstance(c, StepLimit) and c.reached(trainer) for c in trainer.callbacks
    )


def planned_steps(trainer: L.Trainer) -> int:
    """The optimizer steps the run will take: Lightning's estimate within any ``StepLimit``."""
    limits = [c.max_steps for c in getattr(trainer, "callbacks", []) if isinstance(c, StepLimit)]
    return int(min([trainer.estimated_stepping_batches, *limits]))


class Lookahead(L.Callback):
    """Lookahead (Zhang et al., 2019) in airbench94's form: slow weights that the model returns to.

    From epoch ``start_epoch`` on, every ``every_n_steps`` optimizer steps the slow copy moves
    towards the trained ("fast") weights, ``slow += (1 - d) * (fast - slow)``, and the model
    takes the slow weights. ``d`` ramps up as ``decay * (step / total_steps) ** ramp_power``, so
    early updates keep the fast weights and late ones average strongly. The slow copy starts as
    the weights at the first such step; at the end of every training epoch (and of training)
    the model returns to it, so validation, epoch-end checkpoints and the trained model see
    slow weights. Floating-point
    buffers (BatchNorm statistics) are averaged like the parameters. Saved in checkpoints.
    """

    def __init__(
        self,
        decay: float = 0.95**5,
        every_n_steps: int = 5,
        ramp_power: float = 3.0,
        start_epoch: int = 0,
    ):
        if not 0 <= decay < 1 or every_n_steps < 1 or start_epoch < 0:
            raise ConfigError(
                f"callbacks.lookahead: decay={decay} must be in [0, 1), every_n_steps="
                f"{every_n_steps} at least 1 and start_epoch={start_epoch} at least 0."
            )
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.ramp_power = ramp_power
        self.start_epoch = int(start_epoch)
        self.slow: dict[str, torch.Tensor] | None = None
        self._last_step = -1

    def _floats(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        # The wrapped network only (ClassifierModule.model): not the metric states.
        network = getattr(module, "model", module)
        return {k: v for k, v in network.state_dict().items() if v.is_floating_point()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # a resumed run's first batch is no new step
        if self.slow is not None:  # restored from a checkpoint on the CPU
            self.slow = {k: v.to(pl_module.device) for k, v in self.slow.items()}

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        step, total = trainer.global_step, planned_steps(trainer)
        # Under gradient accumulation only the batches that end a step count.
        stepped, self._last_step = step != self._last_step, step
        if stepped and step % self.every_n_steps == 0 and trainer.current_epoch >= self.start_epoch:
            if self.slow is None:
                self.slow = {k: v.detach().clone() for k, v in self._floats(pl_module).items()}
            else:
                self._pull(pl_module, self.decay * (step / total) ** self.ramp_power)
        if self.slow is not None and (step >= total or index + 1 >= trainer.num_training_batches):
            self._pull(pl_module, 1.0)  # the epoch's (or the run's) end: back to the slow weights

    def _pull(self, module: L.LightningModule, decay: float) -> None:
        assert self.slow is not None
        for name, fast in self._floats(module).items():
            slow = self.slow[name]
            slow.lerp_(fast, 1 - decay)
            fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.slow = state_dict["slow"]


class FreezeAfter(L.Callback):
    """Trains the named parameters for their first ``epochs`` epochs only, then freezes them.

    airbench trains its whitening stem's bias for 3 epochs: it helps early and only adds noise
    later. A frozen parameter gets no gradient, so the optimizer leaves it alone (no update, no
    weight decay). Set at every epoch start from the epoch number: a resumed run agrees.
    """

    def __init__(self, parameters: list[str], epochs: int) -> None:
        self.parameters, self.epochs = list(parameters), int(epochs)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        named = dict(pl_module.named_parameters())
        missing = [name for name in self.parameters if name not in named]
        if missing:
            raise ConfigError(
                f"callbacks: FreezeAfter names parameters the model does not have: {missing}; "
                f"some it has: {list(named)[:6]}."
            )
        for name in self.parameters:
            named[name].requires_grad_(trainer.current_epoch < self.epochs)


class StepClock(L.Callback):
    """Records when a run reaches its milestones and writes them to ``out`` as JSON.

    Wall clock (``time.time()``) when the callbacks are built (imports and config done), at fit
    start and at the first training batch (the file is first written then); and, for a
    throughput window, ``perf_counter``/process-CPU seconds and minor page faults at the start
    of batch ``skip`` and at the end of the last training batch, plus the fit end (written
    again then). Used by ``scripts/bench_*.py``: ``+callbacks.clock._target_=
    cnnlab.callbacks.StepClock +callbacks.clock.out=<file>``.
    """

    def __init__(self, out: str, skip: int = 1) -> None:
        self.out, self.skip = Path(out), int(skip)
        self.times: dict[str, float] = {"trainer_built": time.time()}

    def _mark(self, trainer: L.Trainer, key: str) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.times[f"t{key}"] = time.perf_counter()
        self.times[f"cpu{key}"] = time.process_time()
        self.times[f"faults{key}"] = _minor_faults()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times["fit_start"] = time.time()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if "first_step" not in self.times:
            self.times["first_step"] = time.time()
            self.times["first_step_cpu_s"] = time.process_time()
            self.out.write_text(json.dumps(self.times))
        if batch_idx == self.skip:
            self._mark(trainer, "0")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self._mark(trainer, "1")
            self.times["steps"] = batch_idx + 1 - self.skip

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times["fit_end"] = time.perf_counter()
        self.out.write_text(json.dumps(self.times))


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt``: every ``every_n_train_steps`` steps and at every epoch end.

    Two departures from ``ModelCheckpoint(save_last=True)``, both for exact resumption: the
    epoch-end ``last.ckpt`` is written even when the monitored metric did not improve (Lightning
    writes it only alongside a top-k save), and no step checkpoint is taken at an epoch's last
    batch (nor at the fit's last, under ``trainer.max_steps``): one taken before that epoch's
    validation would resume past the validation (Lightning counts the epoch's batches as done)
    and skip it with the epoch's own checkpoint. The epoch-end checkpoint, a moment later,
    covers that step.
    """

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if ends_epoch(trainer):
            return
        super().on_train_batch_end(trainer, *args, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._save_epoch_end(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_epoch_end(trainer)

    def _save_epoch_end(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class FollowThreadShare(L.Callback):
    """The run's side: before each training batch, and before validation and test, take the
    last thread count its launcher wrote into the pipe ``fd`` (:mod:`cnnlab.thread_share`)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        os.set_blocking(fd, False)

    def follow(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:  # nothing new
            return
        except OSError:
            data = b""
        if not data:  # the launcher has gone: keep the threads
            os.close(self.fd)
            self.fd = None
            return
        counts = [int(c) for c in data.split() if c.isdigit()]
        if counts and counts[-1] >= 1 and counts[-1] != torch.get_num_threads():
            log.info("torch threads %d -> %d", torch.get_num_threads(), counts[-1])
            torch.set_num_threads(counts[-1])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and self.fd is not None:  # the launcher counts one process
            os.close(self.fd)
            self.fd = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.follow()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()
