"""Getting dataset files onto disk: downloads that fail fast and say how to place files by hand."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnlab.data.base import InMemoryDataModule
from cnnlab.errors import DataError


class DownloadableDataModule(InMemoryDataModule):
    """An in-memory dataset whose files live in ``root`` and may be downloaded into it.

    Subclasses implement ``_ensure_files`` (check, and download when ``download`` is true);
    Lightning calls ``prepare_data`` on one process per node before ``setup``.
    """

    def __init__(
        self,
        *,
        root: str,
        download: bool = True,
        download_timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download
        self.download_timeout_s = float(download_timeout_s)
        self._files_ok = False

    def prepare_data(self) -> None:
        """Download (on one process per node, before ``setup``) when files are missing."""
        self._ensure_files()

    def _ensure_files(self) -> None:
        raise NotImplementedError


def check_files(
    folder: Path, table: Sequence[tuple[str, str | None]]
) -> tuple[list[str], list[str]]:
    """``(missing, corrupt)`` names of ``table``'s ``(filename, md5 or None)`` in ``folder``.

    Uses torchvision's own MD5 function, i.e. the check its datasets run before loading.
    """
    from torchvision.datasets.utils import calculate_md5

    missing, corrupt = [], []
    for name, md5 in table:
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif md5 is not None and calculate_md5(path) != md5:
            corrupt.append(name)
    return missing, corrupt


def describe_problems(folder: Path, missing: Sequence[str], corrupt: Sequence[str]) -> str:
    """E.g. "missing in <folder>: a, b; corrupt or truncated (MD5 differs ...): <folder>/c"."""
    parts = []
    if missing:
        parts.append(f"missing in {folder}: {', '.join(missing)}")
    if corrupt:
        parts.append(
            "corrupt or truncated (their MD5 differs from the published one): "
            + ", ".join(str(folder / name) for name in corrupt)
        )
    return "; ".join(parts)


def download(
    dataset: str,
    fetch: Callable[[], object],
    *,
    root: Path,
    problems: str,
    manual: str,
    timeout_s: float,
) -> None:
    """Run torchvision's download ``fetch()``; any failure becomes one :class:`DataError`.

    Every socket operation gets ``timeout_s``, so an unreachable host fails within seconds
    instead of hanging on the operating system's TCP timeout once per mirror and retry.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        fetch()
    except (OSError, RuntimeError, ValueError) as err:  # URLError and timeouts are OSErrors
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(
            f"Could not download {dataset} into {root} ({type(err).__name__}: {reason}); "
            f"the files are {problems}. {manual}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
