"""Test-only callback: SIGKILL this process at a named point of training.

Installed in every run of a test through ``+callbacks.kill._target_=killpoints.KillAt`` (so the
killed, the resumed and the reference runs share one config); it acts only in a process whose
environment sets ``CNNLAB_TEST_KILL_AT`` to ``<phase>:<epoch>`` (or ``<phase>:<epoch>:<batch>``
for ``train_batch``, ``ckpt_write:<n>`` for the n-th checkpoint file written).
``CNNLAB_TEST_SIGNAL=SIGTERM`` (or ``SIGINT``) sends that signal instead of SIGKILL,
``CNNLAB_TEST_SIGNAL=ENOSPC`` makes the checkpoint write fail as on a full disk, and
``CNNLAB_TEST_SIGNAL=HOLD`` holds a fresh (not resumed) run there until a SIGTERM/SIGINT arrives
(at most 120 s), for a test that signals it from outside (Slurm's scancel). In a multi-process
run ``CNNLAB_TEST_KILL_RANK=<n>`` limits it to that rank (default: every rank). The phases are
the boundaries where a run's state changes: a training batch, the start, a batch and the end of
validation, a checkpoint write, the epoch end, the end of fit, and testing.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

ENV = "CNNLAB_TEST_KILL_AT"
# its own ROOT: this module is imported by the runs it kills too, which must not import conftest
ROOT = Path(__file__).resolve().parents[1]

# 64 training images in batches of 8: 8 steps an epoch, 3 epochs. The step checkpoint every 4
# steps falls on each epoch's last batch too (the case Lightning would skip validation for).
# Dropout draws random numbers, so a resume that replays the wrong RNG state shows.
TINY_RESUMABLE = [
    "data=synthetic",
    "data.num_train=80",
    "data.val_split=16",
    "data.num_test=32",
    "data.batch_size=8",
    "model.channels=[4,8]",
    "model.hidden=[16]",
    "model.dropout=0.3",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "callbacks.last_every_n_steps.every_n_train_steps=4",
    "callbacks.progress_bar=null",
    "logger=none",
    "torch_threads=1",
    "+callbacks.kill._target_=killpoints.KillAt",
]


def killable_env(phase: str, how: str = "SIGKILL") -> dict[str, str]:
    """The environment of a ``cnnlab.train`` subprocess that ``KillAt`` stops at ``phase``."""
    return {
        **os.environ,
        ENV: phase,
        "CNNLAB_TEST_SIGNAL": how,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
    }


def _die(trainer: L.Trainer) -> None:
    how = os.environ.get("CNNLAB_TEST_SIGNAL", "SIGKILL")
    if how == "HOLD":
        from cnnlab.interrupts import requested_signal

        deadline = time.monotonic() + 120
        while trainer.ckpt_path is None and requested_signal() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("held for 120 s and no signal came")
            time.sleep(0.05)
        return
    if how == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), getattr(signal, how))


class KillAt(L.Callback):
    def __init__(self) -> None:
        spec = os.environ.get(ENV, "")
        self.phase, *numbers = spec.split(":") if spec else [""]
        self.numbers = [int(n) for n in numbers]
        self.writes = 0
        self.done = False

    def _at(self, phase: str, trainer: L.Trainer, *extra: int) -> None:
        if self.phase != phase or trainer.sanity_checking or self.done:
            return
        if os.environ.get("CNNLAB_TEST_KILL_RANK", str(trainer.global_rank)) != str(
            trainer.global_rank
        ):
            return
        if [trainer.current_epoch, *extra][: len(self.numbers)] == self.numbers:
            self.done = True  # a signal that lets the process go on is sent once
            _die(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.phase != "ckpt_write":
            return
        real_save = torch.save

        def save_then_die_halfway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            self.writes += 1
            if self.writes < self.numbers[0] or not hasattr(f, "write"):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            _die(trainer)

        torch.save = save_then_die_halfway

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self._at("train_batch", trainer, batch_idx)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._at("val_start", trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._at("val_batch", trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._at("val_end", trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._at("epoch_end", trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._at("fit_end", trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._at("test", trainer)


class Fault(L.Callback):
    """A sweep job that goes wrong at its first batch: ``action`` ``none``, ``raise`` (an error
    in the job's code) or ``kill`` (its process dies)."""

    def __init__(self, action: str) -> None:
        self.action = action

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.action == "raise":
            raise RuntimeError("a bug in the job's code")
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAfter(L.Callback):
    """After training batch ``batch`` of the first epoch every weight becomes NaN: the next
    batch's loss is the first that is not finite."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.current_epoch == 0 and args[-1] == self.batch:  # args: outputs, batch, index
            with torch.no_grad():
                for param in module.parameters():
                    param.fill_(float("nan"))
