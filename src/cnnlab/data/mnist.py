"""MNIST from the idx files, raw or gzip-compressed as published; nothing is written beside them."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.download import describe_problems, fetch_or_explain
from cnnlab.data.source import DownloadableSource, SourceData, TensorSplit
from cnnlab.errors import DataError

# idx header: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
_IDX_UBYTE = 0x08
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _present(raw: Path, name: str) -> Path | None:
    """``name`` itself, else its ``.gz`` (read compressed: a data folder may be read-only)."""
    for path in (raw / name, raw / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file (gzip-compressed when it ends in .gz); bad ones are named."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"MNIST file {path} is corrupt or truncated ({type(err).__name__}: {err}). Delete "
            "it and download it again."
        ) from None
    head = 4 + 4 * ndim
    problem = None
    if len(data) < head:
        problem = f"it has only {len(data)} bytes"
    elif data[:2] != b"\0\0" or data[2] != _IDX_UBYTE or data[3] != ndim:
        problem = f"its header {data[:4].hex()} is not that of a {ndim}-d unsigned-byte idx file"
    else:
        dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        if len(data) != head + int(np.prod(dims)):
            problem = f"it has {len(data)} bytes where its header {dims} implies more or fewer"
    if problem is not None:
        raise DataError(
            f"MNIST file {path} is corrupt or truncated: {problem}. Delete it and download it "
            "again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)


class MNISTSource(DownloadableSource):
    """MNIST's 60,000 train / 10,000 test 28x28 grey digits from ``<root>/MNIST/raw``
    (torchvision's layout); classes "0".."9"."""

    title = "MNIST"

    def __init__(self, **where: Any) -> None:
        super().__init__(**where)
        self.raw = self.root / "MNIST" / "raw"

    def prepare(self) -> None:
        """Download missing files (``download``) or say where to put them."""
        from torchvision.datasets import MNIST

        names = [n for pair in FILES.values() for n in pair]
        missing = [n for n in names if _present(self.raw, n) is None]
        if missing:
            urls = ", ".join(f"{MNIST.mirrors[0]}{gz}" for gz, _ in MNIST.resources)
            fetch_or_explain(
                "MNIST",
                lambda: MNIST(str(self.root), train=True, download=True),
                allowed=self.download,
                root=self.root,
                problems=describe_problems(self.raw, missing, []),
                manual=f"To place the files by hand, download {urls} into {self.raw} (the .gz "
                "files are read as they are)",
                timeout_s=self.download_timeout_s,
            )

    def load(self) -> SourceData:
        self.prepare()
        splits = {}
        for split, (images_name, labels_name) in FILES.items():
            images_path, labels_path = (
                _present(self.raw, images_name),
                _present(self.raw, labels_name),
            )
            assert images_path is not None and labels_path is not None  # prepare() checked
            images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
            if len(images) != len(labels):
                raise DataError(
                    f"{images_path} has {len(images)} images but {labels_path} has "
                    f"{len(labels)} labels; replace the pair."
                )
            splits[split] = TensorSplit(
                torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
            )
        kind = "gzip-compressed" if images_path.suffix == ".gz" else "raw"
        facts = {"copy": f"{self.raw} ({kind} idx files)"}
        return SourceData(splits, [str(i) for i in range(10)], root=self.raw, facts=facts)
