"""On-disk cache of decoded datasets: content fingerprints, safe loading, atomic writes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serializable ``parts`` (file listings, preprocessing)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def load_cached(path: Path) -> dict[str, Any] | None:
    """The cached dict at ``path``, or None when absent or unreadable (it is then rebuilt).

    Loaded with ``weights_only=True``: only tensors and plain containers, never code.
    """
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        log.warning("Ignoring unreadable cache file %s (%s); rebuilding it.", path, err)
        return None
    return data if isinstance(data, dict) else None


def save_atomic(path: Path, data: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place.

    Readers never see a half-written file, and two runs writing the same key at once both
    leave a complete one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(path: Path, build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """``(data, hit)``: the cache at ``path`` if present, else ``build()`` saved there.

    A cache that cannot be written (read-only disk) only costs the rebuild on the next run.
    """
    data = load_cached(path)
    if data is not None:
        return data, True
    data = build()
    try:
        save_atomic(path, data)
    except OSError as err:
        log.warning("Could not write the dataset cache %s (%s); continuing without it.", path, err)
    return data, False
