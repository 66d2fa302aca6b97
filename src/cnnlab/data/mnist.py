"""MNIST from torchvision's idx files (raw, or gzip-compressed as published)."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch

from cnnlab.data.base import Split
from cnnlab.data.sources import DownloadableDataModule, describe_problems, download
from cnnlab.errors import DataError

# idx header: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
_IDX_UBYTE = 0x08
_IDX_SHAPES = {"images": 3, "labels": 1}


class MNISTDataModule(DownloadableDataModule):
    """``torchvision.datasets.MNIST`` as ``uint8 (N, 1, 28, 28)`` tensors; classes "0".."9".

    Reads ``<root>/MNIST/raw/*-ubyte``; a file present only as ``*-ubyte.gz`` is decompressed
    next to it first. Every idx file's header and size are checked, so a truncated file is
    named instead of failing deep inside torchvision.
    """

    def _ensure_files(self) -> None:
        """Decompress present .gz files, download missing ones (``download``), check all."""
        from torchvision.datasets import MNIST

        if self._files_ok:
            return
        raw = self.root / "MNIST" / "raw"
        names = [Path(gz).stem for gz, _ in MNIST.resources]
        for name in names:
            if not (raw / name).is_file() and (raw / f"{name}.gz").is_file():
                _gunzip(raw / f"{name}.gz", raw / name)
        missing = [n for n in names if not (raw / n).is_file()]
        if missing:
            urls = ", ".join(f"{MNIST.mirrors[0]}{gz}" for gz, _ in MNIST.resources)
            manual = (
                f"To place the files by hand, download {urls} into {raw} (the .gz files are "
                "decompressed automatically)"
            )
            problems = describe_problems(raw, missing, [])
            if not self.download:
                raise DataError(
                    f"MNIST files are {problems}. Set data.download=true to fetch them. {manual}."
                )
            download(
                "MNIST",
                lambda: MNIST(str(self.root), train=True, download=True),
                root=self.root,
                problems=problems,
                manual=f"{manual}, then run again.",
                timeout_s=self.download_timeout_s,
            )
        counts = {}
        for name in names:
            kind = "images" if "images" in name else "labels"
            counts[name] = _check_idx(raw / name, _IDX_SHAPES[kind])
        for prefix in ("train", "t10k"):
            n_images = counts[f"{prefix}-images-idx3-ubyte"][0]
            n_labels = counts[f"{prefix}-labels-idx1-ubyte"][0]
            if n_images != n_labels:
                raise DataError(
                    f"{raw}/{prefix}-images-idx3-ubyte has {n_images} images but "
                    f"{prefix}-labels-idx1-ubyte has {n_labels} labels; replace the pair."
                )
        self._files_ok = True

    def load_splits(self) -> tuple[dict[str, Split], list[str]]:
        from torchvision.datasets import MNIST

        self._ensure_files()
        splits = {}
        for split, train in (("train", True), ("test", False)):
            dataset = MNIST(str(self.root), train=train, download=False)
            splits[split] = (dataset.data[:, None].contiguous(), dataset.targets.long())
        return splits, [str(i) for i in range(len(MNIST.classes))]


def _gunzip(source: Path, target: Path) -> None:
    """Decompress ``source`` to ``target`` atomically; a damaged archive is a DataError."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with gzip.open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    except (OSError, EOFError, zlib.error) as err:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"MNIST archive {source} is corrupt or truncated ({type(err).__name__}: {err}). "
            "Delete it and download it again."
        ) from None


def _check_idx(path: Path, ndim: int) -> list[int]:
    """The dimensions of the idx file ``path``; a wrong header or size is a DataError."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4 + 4 * ndim)
    problem = None
    if len(header) < 4 + 4 * ndim:
        problem = f"it has only {size} bytes"
    elif header[:2] != b"\0\0" or header[2] != _IDX_UBYTE or header[3] != ndim:
        problem = f"its header {header[:4].hex()} is not that of a {ndim}-d unsigned-byte idx file"
    if problem is None:
        dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        expected = len(header) + int(torch.tensor(dims).prod())
        if size != expected:
            problem = f"it has {size} bytes where its header {dims} implies {expected}"
    if problem is not None:
        raise DataError(
            f"MNIST file {path} is corrupt or truncated: {problem}. Delete it (and its .gz) "
            "and download it again."
        )
    return dims
