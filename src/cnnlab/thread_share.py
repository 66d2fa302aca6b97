"""Cores handed on between runs that train side by side.

``hydra/launcher=parallel`` (with ``torch_threads=auto``) and ``python -m cnnlab.reproduce
--jobs N`` start each run with ``cores // jobs`` threads. Once no run is left to start, a run
that ends leaves its cores to the runs still going: the launcher (:class:`ThreadShares`) writes
each one's new thread count into the file named by ``$CNNLAB_THREAD_SHARE``, and the run
(:class:`FollowThreadShare`, added to the trainer whenever that variable is set) switches to it
before its next batch. A sweep's last, often longest, run would otherwise keep a core idle
(README, Sweeps: on 2 cores the small CIFAR-2 nets train 1.7x faster on 2 threads than on 1,
the 100-block one 1.9x). The thread count changes how fast a run computes, not what it computes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

SHARE_ENV = "CNNLAB_THREAD_SHARE"


class ThreadShares:
    """The launcher's side: one file per running run, holding its thread count.

    ``start(key, threads)`` before a run starts (its file's path goes into the run's
    ``$CNNLAB_THREAD_SHARE``), ``end(key, spread=True)`` when it has ended and no run is left
    to start: the running ones then split all ``cores``. A context manager; its temporary
    folder goes when it closes.
    """

    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self.folder = Path(tempfile.mkdtemp(prefix="cnnlab-threads-"))
        self.threads: dict[Any, int] = {}

    def __enter__(self) -> ThreadShares:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def path(self, key: Any) -> Path:
        return self.folder / str(key)

    def start(self, key: Any, threads: int) -> Path:
        self._write(key, threads)
        return self.path(key)

    def end(self, key: Any, spread: bool) -> None:
        """``key``'s run has ended; with ``spread``, the others split the cores (the first
        ones get any remainder)."""
        self.threads.pop(key, None)
        self.path(key).unlink(missing_ok=True)
        running = list(self.threads) if spread else []
        for i, other in enumerate(running):
            share = self.cores // len(running) + (i < self.cores % len(running))
            if share >= 1 and share != self.threads[other]:
                self._write(other, share)

    def _write(self, key: Any, threads: int) -> None:
        # A new file renamed into place: a run never reads half a number.
        temp = self.folder / f".{key}.tmp"
        temp.write_text(str(threads))
        os.replace(temp, self.path(key))
        self.threads[key] = threads


class FollowThreadShare(L.Callback):
    """The run's side: before each training batch, and before validation and test, take the
    thread count its launcher last wrote into ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: Path | None = Path(path)
        self._seen: tuple[int, int] | None = None

    def follow(self) -> None:
        if self.path is None:
            return
        try:
            stat = self.path.stat()
            if (stat.st_ino, stat.st_mtime_ns) == self._seen:
                return
            self._seen = (stat.st_ino, stat.st_mtime_ns)
            threads = int(self.path.read_text())
        except (OSError, ValueError):  # the launcher has gone, or no number: keep the threads
            return
        if threads >= 1 and threads != torch.get_num_threads():
            log.info("torch threads %d -> %d", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:  # the launcher counts a run as one process
            self.path = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.follow()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()


def follow_callbacks() -> list[L.Callback]:
    """``[FollowThreadShare]`` when a launcher shares cores with this run, else ``[]``."""
    path = os.environ.get(SHARE_ENV)
    return [FollowThreadShare(path)] if path else []
