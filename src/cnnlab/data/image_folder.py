"""Image folders: ``<root>/<class>/<image>``, or ``<root>/{train,test}/<class>/<image>``.

Class names are the sub-folder names, sorted; labels follow that order. With ``train/`` and
``test/`` sub-folders the test set is the folder's own, otherwise the data module splits one off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.source import FileSplit, Source, SourceData, dataset_root
from cnnlab.errors import ConfigError, DataError

# torchvision's ImageFolder extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != ".")


def _image_entries(folder: Path) -> list[os.DirEntry]:
    return sorted(
        (
            e
            for e in os.scandir(folder)
            if e.name[0] != "." and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
        ),
        key=lambda e: e.name,
    )


def scan_classes(folder: Path, root: Path) -> tuple[FileSplit, list[str]]:
    """The images of ``folder/<class>/*`` (one ``stat`` each), sorted by class and file name."""
    if not folder.is_dir():
        raise DataError(
            f"Image folder {folder} does not exist. Put the images in "
            f"{folder}/<class name>/<image file> (or set data.root)."
        )
    prefix = folder.relative_to(root).as_posix() + "/" if root != folder else ""
    classes = _class_folders(folder)
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image>.")
    paths, labels, listing = [], [], []
    for label, name in enumerate(classes):
        entries = _image_entries(folder / name)
        if not entries:
            raise DataError(
                f"Class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        for e in entries:
            st = e.stat()
            paths.append(e.path)
            labels.append(label)
            listing.append((f"{prefix}{name}/{e.name}", st.st_size, st.st_mtime_ns))
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
    first = next((e for n in names for e in _image_entries(folder / n)), None)
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
