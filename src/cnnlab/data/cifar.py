"""CIFAR-10 from any copy: the official python pickles or a folder of one JPEG per image.

``cifar2`` and other class subsets are this source with ``data.classes``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cnnlab.data.download import check_files, describe_problems, fetch_or_explain, md5_of
from cnnlab.data.image_folder import read_image_folder
from cnnlab.data.source import DownloadableSource, SourceData, TensorSplit
from cnnlab.errors import ConfigError, DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PICKLES = "cifar-10-batches-py"
JPEG_FOLDER = "cifar10-jpeg"
COPIES = ("auto", "pickles", "jpeg")


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, strings, numbers, numpy arrays.

    Any other global (a function a crafted file would call) is refused, so reading a batch can
    never run code, whatever the bytes are.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Callable[[], Any]]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: __import__("_codecs").encode,  # bytes in protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return make()


def read_batch(path: Path, md5: str | None) -> dict[str, Any]:
    """One CIFAR batch file, its MD5 checked on the very bytes that are then unpickled."""
    data = path.read_bytes()
    if md5 is not None and md5_of(data) != md5:
        raise DataError(
            f"CIFAR-10 file {path} is corrupt or truncated (its MD5 differs from the published "
            "one). Delete it and run again with data.download=true, or replace it by hand."
        )
    try:
        entry = BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # any failure to parse means a file that is not a CIFAR batch
        raise DataError(
            f"CIFAR-10 file {path} cannot be read ({type(err).__name__}: {err}); it is corrupt "
            "or not a CIFAR-10 python pickle. Replace it with the published file."
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR-10 file {path} does not hold a dict; replace it.")
    return entry


class CIFAR10Source(DownloadableSource):
    """CIFAR-10's 50,000 train / 10,000 test 32x32 RGB images, from ``root``.

    ``copy``: ``pickles`` reads ``<root>/cifar-10-batches-py`` (torchvision's layout; every
    file's MD5 is checked; downloaded there with ``download``); ``jpeg`` reads
    ``<root>/cifar10-jpeg/{train,test}/<class>/*.jpg`` (decoded by the storage); ``auto`` takes
    the pickles when present, else the JPEG folder, else downloads the pickles.
    """

    title = "CIFAR-10"

    def __init__(self, copy: str = "auto", **where: Any) -> None:
        super().__init__(**where)
        if copy not in COPIES:
            raise ConfigError(f"data.copy={copy!r} is not valid; use one of {list(COPIES)}.")
        self.copy = copy

    @staticmethod
    def table() -> list[tuple[str, str]]:
        """``(file, published MD5)`` of the pickles (torchvision's table)."""
        from torchvision.datasets import CIFAR10

        files = [(n, m) for n, m in CIFAR10.train_list + CIFAR10.test_list]
        return [*files, (CIFAR10.meta["filename"], CIFAR10.meta["md5"])]

    def _which(self) -> str:
        if self.copy != "auto":
            return self.copy
        if (self.root / PICKLES).is_dir() or not (self.root / JPEG_FOLDER).is_dir():
            return "pickles"
        return "jpeg"

    def _manual(self) -> str:
        from torchvision.datasets import CIFAR10

        return (
            f"To place the files by hand, download {CIFAR10.url} (MD5 {CIFAR10.tgz_md5}) and "
            f"extract it into {self.root} (tar xzf {CIFAR10.filename} -C {self.root}), so that "
            f"{self.root / PICKLES}/data_batch_1 exists"
        )

    def prepare(self) -> None:
        """Check the pickles' MD5s; download the archive (``download``) or explain."""
        if self._which() != "pickles":
            return
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        folder = self.root / PICKLES
        missing, corrupt = check_files(folder, self.table())
        if missing or corrupt:
            fetch_or_explain(
                "CIFAR-10",
                # The archive alone (MD5-checked): torchvision's CIFAR10() would also unpickle
                # the batches with the unrestricted pickle module.
                lambda: download_and_extract_archive(
                    CIFAR10.url, str(self.root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
                ),
                allowed=self.download,
                root=self.root,
                problems=describe_problems(folder, missing, corrupt),
                manual=self._manual() + "; delete corrupt files first",
                timeout_s=self.download_timeout_s,
            )

    def load(self) -> SourceData:
        if self._which() == "jpeg":
            return self._load_jpeg()
        self.prepare()
        folder = self.root / PICKLES
        md5s = dict(self.table())
        meta = read_batch(folder / "batches.meta", md5s["batches.meta"])
        names = [str(n) for n in meta.get("label_names", [])]
        if names != CLASSES:
            raise DataError(f"{folder / 'batches.meta'} lists classes {names}, not {CLASSES}.")
        splits = {}
        for split, files in (
            ("train", [f"data_batch_{i}" for i in range(1, 6)]),
            ("test", ["test_batch"]),
        ):
            entries = [read_batch(folder / f, md5s[f]) for f in files]
            try:
                data = np.vstack([np.asarray(e["data"], dtype=np.uint8) for e in entries])
                labels = [y for e in entries for y in e["labels"]]
                images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
            except (KeyError, ValueError, TypeError) as err:
                raise DataError(
                    f"CIFAR-10 files {', '.join(files)} in {folder} do not hold 'data' rows of "
                    f"3072 bytes and 'labels' ({type(err).__name__}: {err}); replace them."
                ) from None
            splits[split] = TensorSplit(images, torch.as_tensor(labels, dtype=torch.long))
        return SourceData(splits, names, root=folder, facts={"copy": f"{folder} (python pickles)"})

    def _load_jpeg(self) -> SourceData:
        folder = self.root / JPEG_FOLDER
        help_ = f"Or use the official files: {self._manual()}."
        data = read_image_folder(folder, help_)
        if data.class_names != CLASSES:
            raise DataError(
                f"{folder} has class folders {data.class_names}; a CIFAR-10 copy has {CLASSES}."
            )
        data.facts["copy"] = f"{folder} (one JPEG per image)"
        return data
