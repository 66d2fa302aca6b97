"""SIGTERM and SIGINT: stop at the next safe point with a checkpoint that resumes exactly.

While a run trains, the first SIGTERM (``kill``, SLURM preemption) or SIGINT (Ctrl-C) only sets
a flag; :class:`GracefulStop` acts on it where the run's state is consistent:

- after a training batch that is not the last of its epoch: ``last.ckpt`` is written there
  (the same state a step checkpoint holds) and the run stops;
- otherwise (last batch, validation, epoch end): the epoch's own checkpoint is written first,
  and the run stops before the next epoch's first batch, or after ``fit`` after the last one.

The run is then recorded as ``interrupted`` and the process exits with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT); ``resume=true`` continues it. A second signal ends the
process at once (the periodic ``last.ckpt`` still resumes it). In a multi-process (DDP) run the
ranks agree at each of those points whether any of them was signalled (Slurm signals every
task, ``kill`` perhaps only one), then all of them write the checkpoint together and stop.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from cnnlab.callbacks import ends_epoch

HANDLED = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """A run (or sweep) stopped by a signal; like KeyboardInterrupt, not an ``Exception``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (joblib, submitit)
        return (RunInterrupted, (self.signum, str(self)))


@dataclass
class _SweepState:
    """What the launching process knows about the sweep it runs (set by OutputDirGuard)."""

    started: bool = False
    directory: Path | None = None


SWEEP = _SweepState()


class _Pending:
    signum: int | None = None


def requested_signal() -> int | None:
    """The signal received since :func:`stop_on_signals` began, if any."""
    return _Pending.signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _Pending.signum is not None:  # the second signal: stop now
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _Pending.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into a request that :class:`GracefulStop` honours, for the block."""
    _Pending.signum = None
    previous = {s: signal.getsignal(s) for s in HANDLED}
    for s in HANDLED:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class GracefulStop(L.Callback):
    """Stops the fit at a safe point once a signal was received; remembers the fit metrics.

    ``on_fit_start`` is called once the data is set up: the moment the run counts as started.

    The metrics logged by the time a checkpoint is written are saved in it, so a run resumed
    after its last epoch (killed during testing, say) still reports its final train/val values,
    and so is the run's wall time so far: a resumed run reports the time of all its calls.
    """

    def __init__(
        self,
        last_ckpt: Path | None,
        resume_from: str | None = None,
        on_fit_start: Callable[[], None] | None = None,
    ) -> None:
        self.last_ckpt = last_ckpt
        self.resume_from = resume_from
        self.start_run = on_fit_start
        self.restored_metrics: dict[str, float] = {}
        self.started, self.earlier_s = time.perf_counter(), 0.0

    def wall_time_s(self) -> float:
        """Seconds this run has run: this call, plus the earlier calls up to the checkpoint."""
        return self.earlier_s + time.perf_counter() - self.started

    def raise_if_signalled(self, trainer: L.Trainer) -> None:
        """After ``fit`` or ``test``: stop if a signal arrived meanwhile (checkpoint saved)."""
        signum = _agreed_signal(trainer)
        if signum is not None:
            raise RunInterrupted(signum, f"{signal_name(signum)} at step {trainer.global_step}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start_run is not None:
            self.start_run()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler just before (it stops at other points,
        # e.g. mid-validation, and exits 0): keep ours, on every rank.
        for s in HANDLED:
            signal.signal(s, _on_signal)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.last_ckpt is None:
            return
        signum = _agreed_signal(trainer)
        if signum is None or ends_epoch(trainer):  # its epoch-end checkpoint follows
            return
        trainer.save_checkpoint(self.last_ckpt)  # every rank: in DDP a collective call
        raise RunInterrupted(signum, f"{signal_name(signum)} at step {trainer.global_step}")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        # At an epoch's first batch, the previous epoch's checkpoint is the latest state; mid-
        # epoch, the batch runs and its end writes the checkpoint.
        if batch_idx != 0 or self.last_ckpt is None:
            return
        signum = _agreed_signal(trainer)
        if signum is not None:
            raise RunInterrupted(signum, f"{signal_name(signum)} at step {trainer.global_step}")

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        metrics = trainer.callback_metrics if trainer is not None else {}
        kept = {k: float(v) for k, v in metrics.items() if k.startswith(("train/", "val/"))}
        return {"metrics": kept, "wall_time_s": self.wall_time_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Only a resumed fit takes them: the best checkpoint loaded for testing is an earlier
        # state of this same call (its metrics are not the last epoch's, its time is counted).
        if self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING:
            self.restored_metrics = dict(state_dict.get("metrics", {}))
            self.earlier_s = float(state_dict.get("wall_time_s", 0.0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    _trainer: L.Trainer | None = None


def _agreed_signal(trainer: L.Trainer) -> int | None:
    """The pending signal; with several ranks, whether any of them received one (a collective
    call: every rank makes it at the same point). Ranks not signalled themselves take SIGTERM.

    With several ranks the answer is the agreed one only: a signal that lands on one rank
    after the reduction waits for the next point, where all ranks see it.
    """
    if trainer.world_size == 1:
        return _Pending.signum
    if not trainer.strategy.reduce_boolean_decision(_Pending.signum is not None, all=False):
        return None
    if _Pending.signum is None:
        _Pending.signum = signal.SIGTERM
    return _Pending.signum


def record_interrupt(trainer: L.Trainer, run_dir: Path, err: RunInterrupted) -> None:
    """metrics.json says ``interrupted``, with the signal and the step; resume=true continues."""
    from cnnlab.run_lifecycle import running_record
    from cnnlab.rundir import METRICS_FILE, read_metrics, write_json_atomic

    if not trainer.is_global_zero:
        return
    last = run_dir / "checkpoints" / "last.ckpt"
    # When and where the run started is the running record's, not the moment of the signal.
    running = read_metrics(run_dir) or {}
    started = (
        {k: running[k] for k in ("pid", "hostname", "started_at") if k in running}
        if running.get("status") == "running"
        else {}
    )
    record = {
        **running_record(),
        **started,
        "status": "interrupted",
        "signal": signal_name(err.signum),
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "error": f"interrupted by {err}; resume=true continues it from {last}",
    }
    write_json_atomic(run_dir / METRICS_FILE, record)
