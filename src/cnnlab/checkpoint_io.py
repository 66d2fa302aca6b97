"""Checkpoint files written atomically: a kill during a save never leaves a half-written file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from cnnlab.rundir import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the same directory, fsync, then rename over the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
