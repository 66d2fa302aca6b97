"""Generic image folders, in memory (decoded once, cached on disk) or read per sample.

Layouts: ``<root>/train/<class>/*`` with ``<root>/test/<class>/*`` (an official test set), or
``<root>/<class>/*`` alone (test and validation sets split off by fractions). Class names are
the sub-folder names, sorted; labels follow that order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from cnnlab.data import cache as disk_cache
from cnnlab.data.base import InMemoryDataModule, Split
from cnnlab.data.files import FileDataModule, Samples
from cnnlab.data.folder import (
    FolderScan,
    check_bad_images,
    decode_images,
    find_bad_images,
    resolve_workers,
    scan_classes,
    validate_on_bad_image,
)
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Bumped when the layout of the cached files changes, so that old caches are not read.
CACHE_FORMAT = 1


def image_folder_datamodule(
    *, in_memory: bool, **kwargs: Any
) -> InMemoryDataModule | FileDataModule:
    """The ``data=image_folder`` target: :class:`InMemoryImageFolder` or :class:`FileImageFolder`.

    DataLoader-worker settings only concern files read per sample and are dropped in memory;
    the device-residence settings only concern in-memory data and are dropped for files.
    """
    if in_memory:
        for key in ("num_workers", "persistent_workers"):
            kwargs.pop(key, None)
        if kwargs.get("eval_transforms") is not None:
            raise ConfigError(
                "data.in_memory=true decodes each image once, resized to image_size; per-sample "
                "data.eval_transforms need data.in_memory=false (or set them to null)."
            )
        kwargs.pop("eval_transforms", None)
        return InMemoryImageFolder(**kwargs)
    for key in ("keep_on_device", "device_memory_fraction"):
        kwargs.pop(key, None)
    return FileImageFolder(**kwargs)


def _folder_layout(root: Path, dataset: str, help: str | None) -> dict[str, Path]:
    """``{"train": folder[, "test": folder]}`` for the two supported layouts."""
    if not root.is_dir():
        raise DataError(
            f"{dataset}: data.root={root} does not exist. Expected {root}/<class>/<image> or "
            f"{root}/train/<class>/<image> plus {root}/test/<class>/<image>."
            + (f" {help}" if help else "")
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {"train": root / "train", "test": root / "test"}
    return {"train": root}


def _scan(root: Path, dataset: str, help: str | None) -> tuple[dict[str, FolderScan], list[str]]:
    layout = _folder_layout(root, dataset, help)
    found = {split: scan_classes(folder, dataset, root) for split, folder in layout.items()}
    names = found["train"].class_names
    if "test" in found and found["test"].class_names != names:
        raise DataError(
            f"{dataset}: {layout['train']} has classes {names} but {layout['test']} has "
            f"{found['test'].class_names}; both need the same class folders."
        )
    return found, names


def _listing(found: dict[str, FolderScan]) -> list[tuple[str, int, int]]:
    return [entry for scan in found.values() for entry in scan.listing]


def _cache_file(cache_dir: str | None, kind: str, root: Path, key: str) -> Path | None:
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"{kind}-{root.resolve().name}-{key}.pt"


class InMemoryImageFolder(InMemoryDataModule):
    """An image folder decoded once into ``uint8`` tensors, resized to ``image_size``.

    The decoded tensors are cached in ``cache_dir`` (a ``.pt`` file read back with
    ``weights_only=True``), keyed by the folder's content listing (relative paths, sizes and
    modification times) and the preprocessing (``image_size``, ``in_channels``): the second run
    loads the cache, and any changed, added or removed file, or another size or colour mode,
    builds a new one. Decoding runs in ``decode_workers`` processes. Undecodable images are
    skipped with one warning (``on_bad_image: skip``) or stop the run (``error``).
    """

    def __init__(
        self,
        *,
        root: str,
        cache_dir: str | None = None,
        on_bad_image: str = "skip",
        decode_workers: int | None = None,
        missing_help: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.missing_help = missing_help
        self.cache_dir = cache_dir
        self.on_bad_image = validate_on_bad_image(on_bad_image)
        self.decode_workers = resolve_workers(decode_workers)
        if self.in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels={self.in_channels} must be 1 (grey) or 3 (RGB).")
        self.cache_hit: bool | None = None
        self.cache_path: Path | None = None
        self._prepared: tuple[dict[str, FolderScan], dict[str, Any]] | None = None

    def prepare_data(self) -> None:
        """Decode and cache once per node, before ``setup`` (other ranks then read the cache)."""
        if self.cache_dir is not None:
            self._prepared = self._load()

    def _load(self) -> tuple[dict[str, FolderScan], dict[str, Any]]:
        started = time.perf_counter()
        found, names = _scan(self.root, self.name, self.missing_help)
        settings = {
            "format": CACHE_FORMAT,
            "image_size": self.image_size,
            "channels": self.in_channels,
        }
        key = disk_cache.fingerprint(_listing(found), settings)

        def build() -> dict[str, Any]:
            return self._decode(found, names)

        self.cache_path = _cache_file(self.cache_dir, "image_folder", self.root, key)
        if self.cache_path is None:
            data, self.cache_hit = build(), False
        else:
            data, self.cache_hit = disk_cache.cached(self.cache_path, build)
        log.info(
            "%s: %s %d images of %s in %.1f s.",
            self.name,
            "loaded cached" if self.cache_hit else "decoded",
            sum(len(data[f"{s}_labels"]) for s in found),
            self.root,
            time.perf_counter() - started,
        )
        return found, data

    def load_splits(self) -> tuple[dict[str, Split], list[str]]:
        found, data = self._prepared or self._load()
        self._prepared = None
        check_bad_images(
            dict(zip(data["bad_files"], data["bad_reasons"], strict=True)),
            self.on_bad_image,
            self.name,
            self.root,
        )
        splits = {s: (data[f"{s}_images"], data[f"{s}_labels"]) for s in found}
        return splits, list(data["class_names"])

    def _decode(self, found: dict[str, FolderScan], names: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = {"class_names": names, "bad_files": [], "bad_reasons": []}
        for split, scan in found.items():
            images, bad = decode_images(
                scan.paths, self.image_size, self.in_channels, self.decode_workers
            )
            labels = [y for p, y in zip(scan.paths, scan.labels, strict=True) if p not in bad]
            data[f"{split}_images"] = torch.from_numpy(images)
            data[f"{split}_labels"] = torch.tensor(labels, dtype=torch.long)
            relative = dict(zip(scan.paths, (e[0] for e in scan.listing), strict=True))
            for path, reason in bad.items():
                data["bad_files"].append(relative[path])
                data["bad_reasons"].append(reason)
        return data


class FileImageFolder(FileDataModule):
    """An image folder read per sample with the configured v2 transform pipelines.

    Every file is checked once with PIL (``decode_workers`` processes); the list of
    undecodable files is cached in ``cache_dir`` under the folder's content listing, so later
    runs skip the check. Bad files are skipped with one warning or stop the run
    (``on_bad_image``). ``eval_transforms: null`` resizes to ``image_size x image_size``.
    """

    def __init__(
        self,
        *,
        root: str,
        cache_dir: str | None = None,
        on_bad_image: str = "skip",
        decode_workers: int | None = None,
        missing_help: str | None = None,
        eval_transforms: Any = None,
        **kwargs: Any,
    ) -> None:
        if eval_transforms is None:
            from torchvision.transforms import v2

            size = int(kwargs["image_size"])
            eval_transforms = [v2.Resize([size, size], antialias=True)]
        super().__init__(eval_transforms=eval_transforms, **kwargs)
        self.root = Path(root)
        self.missing_help = missing_help
        self.cache_dir = cache_dir
        self.on_bad_image = validate_on_bad_image(on_bad_image)
        self.decode_workers = resolve_workers(decode_workers)
        self.scan_cache_hit: bool | None = None
        self._prepared: tuple[dict[str, FolderScan], list[str], dict[str, Any]] | None = None

    def prepare_data(self) -> None:
        """Check the files once per node, before ``setup`` (other ranks then read the result)."""
        if self.cache_dir is not None:
            self._prepared = self._check()

    def _check(self) -> tuple[dict[str, FolderScan], list[str], dict[str, Any]]:
        found, names = _scan(self.root, self.name, self.missing_help)
        key = disk_cache.fingerprint(_listing(found), "checked with PIL")
        path = _cache_file(self.cache_dir, "image_check", self.root, key)

        def build() -> dict[str, Any]:
            paths = [p for scan in found.values() for p in scan.paths]
            relative = dict(zip(paths, (e[0] for e in _listing(found)), strict=True))
            bad = find_bad_images(paths, self.decode_workers)
            return {"bad_files": [relative[p] for p in bad], "bad_reasons": list(bad.values())}

        if path is None:
            checked, self.scan_cache_hit = build(), False
        else:
            checked, self.scan_cache_hit = disk_cache.cached(path, build)
        return found, names, checked

    def load_samples(self) -> tuple[dict[str, Samples], list[str]]:
        found, names, checked = self._prepared or self._check()
        self._prepared = None
        check_bad_images(
            dict(zip(checked["bad_files"], checked["bad_reasons"], strict=True)),
            self.on_bad_image,
            self.name,
            self.root,
        )
        bad = set(checked["bad_files"])
        splits = {
            split: [
                (path, label)
                for path, label, entry in zip(scan.paths, scan.labels, scan.listing, strict=True)
                if entry[0] not in bad
            ]
            for split, scan in found.items()
        }
        return splits, names
