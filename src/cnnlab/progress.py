"""The training progress display: a tqdm bar on a terminal, one log line per epoch otherwise."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab.progress")

STYLES = ("auto", "bar", "lines")


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, fixed for a readable console, or one line per epoch.

    ``style``: ``bar`` (tqdm), ``lines`` (one ``epoch 3/10 train/loss=... val/acc=...`` log line
    per epoch, for nohup / SLURM logs), ``auto`` (``bar`` when stdout is a terminal). With the
    bar, log lines print above it instead of being glued to it, and the bar shows the epoch's
    own ``train/acc`` (the module logs it after Lightning's bar has taken its metrics).
    """

    def __init__(self, refresh_rate: int = 20, style: str = "auto") -> None:
        if style not in STYLES:
            raise ConfigError(
                f"callbacks.progress_bar.style={style!r} is not valid: it must be one of {STYLES}."
            )
        super().__init__(refresh_rate=refresh_rate)
        self.lines = style == "lines" or (style == "auto" and not sys.stdout.isatty())
        self._redirect = ExitStack()
        self._epoch_started: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.lines:
            self.disable()
        elif trainer.is_global_zero:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect.enter_context(logging_redirect_tqdm())

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._redirect.close()
        super().teardown(trainer, pl_module, stage)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)
        self._epoch_started = time.perf_counter()
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing yet: the epoch's metrics are complete only at the next epoch or the end."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    def _finish_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Show the epoch that just ended with its final metrics, once."""
        if self._epoch_started is None:
            return
        seconds = time.perf_counter() - self._epoch_started
        self._epoch_started = None
        if not self.lines:
            if not self.train_progress_bar.disable:
                self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
            return
        if trainer.is_global_zero:
            metrics = "  ".join(
                f"{k}={float(v):.4f}" for k, v in sorted(trainer.progress_bar_metrics.items())
            )
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
            log.info("epoch %d/%s  %s  (%.1f s)", trainer.current_epoch, epochs, metrics, seconds)
