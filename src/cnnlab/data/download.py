"""Getting dataset files onto disk and checking them: one home for downloads and MD5s.

Downloads fail fast (a socket timeout per operation) and always say how to place the files by
hand; verification names every missing or corrupt file.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from cnnlab.errors import DataError


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_md5(path: Path) -> str:
    """The MD5 of a file, read in chunks (torchvision's tables list the published ones)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(
    folder: Path, table: Sequence[tuple[str, str | None]]
) -> tuple[list[str], list[str]]:
    """``(missing, corrupt)`` names of ``table``'s ``(filename, md5 or None)`` in ``folder``."""
    missing, corrupt = [], []
    for name, md5 in table:
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif md5 is not None and file_md5(path) != md5:
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


def fetch_or_explain(
    dataset: str,
    fetch: Callable[[], object],
    *,
    allowed: bool,
    root: Path,
    problems: str,
    manual: str,
    timeout_s: float,
) -> None:
    """Download (``allowed``, i.e. ``data.download=true``) or stop with the manual steps."""
    if not allowed:
        raise DataError(
            f"{dataset} files are {problems}. Set data.download=true to fetch them, or: {manual}."
        )
    download(
        dataset,
        fetch,
        root=root,
        problems=problems,
        manual=f"{manual}, then run again.",
        timeout_s=timeout_s,
    )
