"""Image folders: ``<root>/<class>/<image>``, or ``<root>/{train,test}/<class>/<image>``.

Class names are the sub-folder names, sorted; labels follow that order. A class's images may lie
in nested folders (read as torchvision's ImageFolder reads them); hidden entries are left out.
With ``train/`` and ``test/`` sub-folders the test set is the folder's own, otherwise the data
module splits one off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.source import FileSplit, Source, SourceData, dataset_root
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# torchvision's ImageFolder extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != ".")


def _image_files(folder: Path, dangling: list[str]) -> list[tuple[str, os.DirEntry]]:
    """``(path relative to folder, entry)`` of each image under ``folder``, sorted, sub-folders
    included (torchvision's ImageFolder reads a class's nested folders too; linked folders are
    followed, each once). Image names that are links to nothing go to ``dangling``."""
    found: list[tuple[str, os.DirEntry]] = []
    seen: set[tuple[int, int]] = set()

    def walk(directory: str, relative: str) -> None:
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree would never end
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as listing:
            entries = sorted((e for e in listing if e.name[0] != "."), key=lambda e: e.name)
        for e in entries:
            if not e.name.lower().endswith(IMAGE_EXTENSIONS) or e.is_dir():
                continue
            if e.is_file():
                found.append((relative + e.name, e))
            elif e.is_symlink() and not os.path.exists(e.path):
                dangling.append(relative + e.name)
        for e in entries:
            if e.is_dir():
                walk(e.path, f"{relative}{e.name}/")

    walk(str(folder), "")
    return found


def scan_classes(folder: Path, root: Path) -> tuple[FileSplit, list[str]]:
    """The images under ``folder/<class>/`` (one ``stat`` each), sorted by class and path."""
    if not folder.is_dir():
        raise DataError(
            f"Image folder {folder} does not exist. Put the images in "
            f"{folder}/<class name>/<image file> (or set data.root)."
        )
    prefix = folder.relative_to(root).as_posix() + "/" if root != folder else ""
    classes = _class_folders(folder)
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image>.")
    paths, labels, listing, dangling = [], [], [], []
    for label, name in enumerate(classes):
        broken: list[str] = []
        entries = _image_files(folder / name, broken)
        dangling += [f"{name}/{b}" for b in broken]
        if not entries:
            raise DataError(
                f"Class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})"
                + (f"; its {len(broken)} image links point nowhere." if broken else ".")
            )
        for relative, e in entries:
            st = e.stat()
            paths.append(e.path)
            labels.append(label)
            listing.append((f"{prefix}{name}/{relative}", st.st_size, st.st_mtime_ns))
    if dangling:
        log.warning(
            "Skipped %d image file(s) under %s that are links to nothing (e.g. %s); fix or "
            "delete the links to silence this.",
            len(dangling),
            folder,
            folder / dangling[0],
        )
    return FileSplit(paths, torch.tensor(labels, dtype=torch.long), listing), classes


def folder_layout(root: Path, missing_help: str | None = None) -> dict[str, Path]:
    """``{"train": folder[, "test": folder]}`` for the two supported layouts."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"Image folder {root} {what} (data.root). Expected {root}/<class>/<image> or "
            f"{root}/train/<class>/<image> plus {root}/test/<class>/<image>."
            + (f" {missing_help}" if missing_help else "")
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {"train": root / "train", "test": root / "test"}
    return {"train": root}


def read_image_folder(root: Path, missing_help: str | None = None) -> SourceData:
    """Scan both layouts; the train and test folders must have the same classes."""
    layout = folder_layout(root, missing_help)
    found = {split: scan_classes(folder, root) for split, folder in layout.items()}
    names = found["train"][1]
    if "test" in found and found["test"][1] != names:
        raise DataError(
            f"{layout['train']} has classes {names} but {layout['test']} has "
            f"{found['test'][1]}; both need the same class folders."
        )
    return SourceData({s: split for s, (split, _) in found.items()}, names, root=root)


def probe_image_folder(root: Path, size: bool = True) -> tuple[list[str], int | None]:
    """Class names and image size (of the first image, which must be square) of a folder.

    What ``data=image_folder data.root=DIR`` fills in for unset ``class_names``/``image_size``,
    before the model is built, so that the run's config records them.
    """
    from PIL import Image

    folder = folder_layout(root)["train"]
    names = _class_folders(folder)
    first = next((e for n in names for _, e in _image_files(folder / n, [])), None)
    if first is None:
        raise DataError(f"{folder} has no class sub-folders with images in them.")
    if not size:
        return names, None
    try:
        with Image.open(first.path) as image:
            width, height = image.size
    except OSError as err:
        raise DataError(f"Cannot read the size of {first.path} ({err}).") from None
    if width != height:
        raise ConfigError(
            f"{first.path} is {width}x{height}, not square; set data.image_size=<side> to say "
            "what size every image is resized to."
        )
    return names, width


class ImageFolderSource(Source):
    """Any labelled image folder (see the module docstring); ``missing_help`` says where to get
    it when ``root`` does not exist."""

    title = "image folder"

    def __init__(self, root: str, missing_help: str | None = None) -> None:
        self.root = dataset_root(root, self.title)
        self.missing_help = missing_help

    def load(self) -> SourceData:
        return read_image_folder(self.root, self.missing_help)


def fill_from_folder(data: Any) -> None:
    """Set an image-folder config's unset (``???``) ``class_names``/``image_size`` from the folder.

    Runs before the model is built from them, so that the checkpoint's config records them.
    """
    from omegaconf import OmegaConf, open_dict

    if not str(data.get("source", "")).endswith(".ImageFolderSource"):
        return
    unset = [k for k in ("class_names", "image_size") if OmegaConf.is_missing(data, k)]
    if not unset or OmegaConf.is_missing(data, "root"):
        return
    names, size = probe_image_folder(Path(data.root), size="image_size" in unset)
    with open_dict(data):
        if "class_names" in unset:
            data.class_names = names
        if "image_size" in unset:
            data.image_size = size
