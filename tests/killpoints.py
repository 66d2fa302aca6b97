"""Test-only callback: SIGKILL this process at a named point of training.

Installed in every run of a test through ``+callbacks.kill._target_=killpoints.KillAt`` (so the
killed, the resumed and the reference runs share one config); it acts only in a process whose
environment sets ``CNNLAB_TEST_KILL_AT`` to ``<phase>:<epoch>`` (or ``<phase>:<epoch>:<batch>``
for ``train_batch``, ``ckpt_write:<n>`` for the n-th checkpoint file written). The phases are
the boundaries where a run's state changes: a training batch, the start, a batch and the end of
validation, a checkpoint write, the epoch end, the end of fit, and testing.
"""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import lightning as L
import torch

ENV = "CNNLAB_TEST_KILL_AT"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    def __init__(self) -> None:
        spec = os.environ.get(ENV, "")
        self.phase, *numbers = spec.split(":") if spec else [""]
        self.numbers = [int(n) for n in numbers]
        self.writes = 0

    def _at(self, phase: str, trainer: L.Trainer, *extra: int) -> None:
        if self.phase != phase or trainer.sanity_checking:
            return
        if [trainer.current_epoch, *extra][: len(self.numbers)] == self.numbers:
            _die()

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
            _die()

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
