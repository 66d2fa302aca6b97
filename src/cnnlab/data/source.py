"""What a dataset *source* returns: splits of in-memory images or of image files, class names.

A source (``cnnlab.data.cifar.CIFAR10Source``, ``...mnist.MNISTSource``, ...) knows only where
a dataset's files are, how to download and verify them and how to read them. It has no
Lightning in it; :class:`cnnlab.data.datamodule.ClassificationDataModule` turns its splits into
batches with the storage the config chooses (``memory`` or ``files``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import ConfigError


@dataclass
class TensorSplit:
    """Images already decoded: ``uint8 (N, C, H, W)`` and ``int64 (N,)`` labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    """Image files and their labels; ``listing`` holds ``(path relative to the dataset root,
    size, mtime_ns)`` per file, what caches of decoded or checked files are keyed by."""

    paths: list[str]
    labels: torch.Tensor
    listing: list[tuple[str, int, int]]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> FileSplit:
        keep = index.tolist()
        return FileSplit(
            [self.paths[i] for i in keep], self.labels[index], [self.listing[i] for i in keep]
        )


Split = TensorSplit | FileSplit


@dataclass
class SourceData:
    """A source's splits (``train`` and optionally ``val``/``test``) and label names.

    ``root`` is the folder the files were read from (named in messages and cache file names);
    ``facts`` are recorded in the run's ``metrics.json`` (e.g. which copy of a dataset was read,
    or why a split was drawn at random).
    """

    splits: dict[str, Split]
    class_names: list[str]
    root: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """A dataset's files: :meth:`prepare` fetches them, :meth:`load` reads them.

    ``prepare`` runs on one process per node before ``load`` (Lightning's ``prepare_data``):
    downloads belong there, and only there, since nothing else ever writes into a data folder.
    """

    #: shown in messages and recorded as the dataset's name
    title = "dataset"

    def prepare(self) -> None:  # noqa: B027 (optional hook: most sources fetch nothing)
        """Download missing files when the user allowed it; the default has nothing to fetch."""

    @abstractmethod
    def load(self) -> SourceData:
        """Read the splits (after :meth:`prepare`); problems raise one :class:`DataError`."""


def dataset_root(root: str | Path, title: str) -> Path:
    """``root`` as a path, refused when it or a folder above it is a file: the mistake would
    otherwise read as missing dataset files, with no word of what to change."""
    root = Path(root)
    for path in (root, *root.parents):
        if path.is_dir():
            break
        if path.exists():
            raise ConfigError(
                f"paths.data_dir (or data.root) leads to {path}, which is a file, not a folder: "
                f"the {title} files cannot be under it (data.root={root}). Point "
                "paths.data_dir at the folder holding the datasets, or data.root at this "
                "dataset's own folder."
            )
    return root


class DownloadableSource(Source):
    """A source whose files live under ``root`` and that may download them there
    (``download``; each socket operation times out after ``download_timeout_s``)."""

    def __init__(self, root: str, download: bool = True, download_timeout_s: float = 30.0) -> None:
        self.root = dataset_root(root, self.title)
        self.download = download
        self.download_timeout_s = float(download_timeout_s)


def parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``cls`` and of the constructors it passes ``**kwargs`` to."""
    out: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out[name] = p
    return out
