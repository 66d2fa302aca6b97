"""CelebA faces with one binary attribute (default "Smiling") as the label.

Reads what users really have: torchvision's official layout (the five annotation files, MD5s
checked), a partial copy (any subset of images and an attribute file listing them), or the CSV
layout (``list_attr_celeba.csv``, ``list_eval_partition.csv``); attribute values -1/1 or 0/1;
images at any resolution (crops are given relative to the aligned 178x218 face, see
:mod:`cnnlab.data.transforms`). Without usable val/test partitions the split comes from
``data.split``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.download import check_files, describe_problems, fetch_or_explain
from cnnlab.data.source import DownloadableSource, FileSplit, SourceData
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_OFFICIAL_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
# list_eval_partition: 0 train, 1 valid, 2 test.
PARTITIONS = {"train": 0, "val": 1, "test": 2}
_FIX = (
    f"Replace it with the published file ({_OFFICIAL_PAGE}), or a CSV copy "
    "(list_attr_celeba.csv with an image_id column)."
)


def official_table() -> list[tuple[str, str]]:
    """``(annotation file, published MD5)`` (torchvision's table, the zip left out)."""
    from torchvision.datasets import CelebA

    return [(name, md5) for _, md5, name in CelebA.file_list if not name.endswith(".zip")]


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".txt", ".csv"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"CelebA file {path} cannot be read as text ({type(err).__name__}: {err}). {_FIX}"
        ) from None


def read_attributes(path: Path) -> tuple[list[str], list[str], list[list[int]]]:
    """``(attribute names, image files, rows of values)`` of a .txt or .csv attribute file."""
    text = _read_text(path)
    if path.suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        header, body = (rows[0][1:], rows[1:]) if rows else ([], [])
    else:  # the count, then the names, then "<image> v1 ... v40"
        lines = text.splitlines()
        header = lines[1].split() if len(lines) > 1 else []
        body = [line.split() for line in lines[2:]]
    names, files, values = [h.strip() for h in header], [], []
    for number, fields in enumerate(body, start=3 if path.suffix == ".txt" else 2):
        if not fields:
            continue
        try:
            row = [int(v) for v in fields[1:]]
        except ValueError:
            row = []
        if len(row) != len(names) or not names or any(v not in (-1, 0, 1) for v in row):
            raise DataError(
                f"{path}:{number}: expected '<image> ' and {len(names)} values of -1/1 or 0/1, "
                f"got {' '.join(fields)[:80]!r}. {_FIX}"
            )
        files.append(fields[0].strip())
        values.append(row)
    if not files:
        raise DataError(f"CelebA attribute file {path} lists no images. {_FIX}")
    return names, files, values


def read_partition(path: Path) -> dict[str, int]:
    """``{image file: 0 train | 1 valid | 2 test}`` from a .txt or .csv partition file."""
    lines = _read_text(path).splitlines()
    if path.suffix == ".csv":
        rows = [row for row in csv.reader(lines[1:]) if row]
    else:
        rows = [line.split() for line in lines if line.strip()]
    out = {}
    for number, fields in enumerate(rows, start=1):
        if len(fields) != 2 or fields[1].strip() not in ("0", "1", "2"):
            raise DataError(
                f"{path}:{number}: expected '<image> <0|1|2>', got {fields!r}; fix or delete "
                "the file (without it the split comes from data.split)."
            )
        out[fields[0].strip()] = int(fields[1])
    return out


class CelebASource(DownloadableSource):
    """CelebA's aligned faces under ``<root>/celeba`` (torchvision's layout) or ``<root>``.

    ``train_subset``/``val_subset``/``test_subset`` keep the first N images of an official
    partition (null: all), as MLPT does with ``Subset(ds, torch.arange(N))``. Labels: 0 =
    without, 1 = with the attribute.
    """

    title = "CelebA"

    def __init__(
        self,
        attribute: str = "Smiling",
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        **where: Any,
    ) -> None:
        super().__init__(**where)
        self.base = self.root
        has_own = (self.base / "celeba").is_dir() or _find(self.base, "list_attr_celeba") is None
        self.folder = self.base / "celeba" if has_own else self.base
        self.attribute = attribute
        self.subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
        for split, n in self.subsets.items():
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ConfigError(f"data.{split}_subset={n!r} must be a positive count or null.")

    def _manual(self) -> str:
        names = ", ".join(n for n, _ in official_table())
        return (
            f"To place the files by hand, download img_align_celeba.zip and {names} from "
            f"{_OFFICIAL_PAGE} (Google Drive links there), put them in {self.folder} and unzip "
            f"img_align_celeba.zip there, so that {self.folder}/img_align_celeba/000001.jpg exists"
        )

    def prepare(self) -> None:
        """Download only when there is no copy at all (no attribute file); never complete one."""
        if _find(self.folder, "list_attr_celeba") is not None:
            return
        from torchvision.datasets import CelebA

        missing = [n for n, _ in official_table()] + ["img_align_celeba/"]
        fetch_or_explain(
            "CelebA",
            lambda: CelebA(str(self.base), split="all", target_type="attr", download=True),
            allowed=self.download,
            root=self.folder,
            problems=describe_problems(self.folder, missing, []),
            manual=self._manual() + " (or use a CSV copy: list_attr_celeba.csv)",
            timeout_s=self.download_timeout_s,
        )

    def _images_folder(self) -> Path:
        for folder in (
            self.folder / "img_align_celeba" / "img_align_celeba",
            self.folder / "img_align_celeba",
        ):
            if folder.is_dir():
                return folder
        raise DataError(
            f"CelebA image folder {self.folder / 'img_align_celeba'} does not exist; unzip "
            f"img_align_celeba.zip in {self.folder}."
        )

    def load(self) -> SourceData:
        self.prepare()
        attr_path = _find(self.folder, "list_attr_celeba")
        assert attr_path is not None  # prepare() downloaded it or stopped
        table = official_table()
        official = all((self.folder / n).is_file() for n, _ in table)
        if official:
            _, corrupt = check_files(self.folder, table)
            if corrupt:
                raise DataError(
                    f"CelebA files are {describe_problems(self.folder, [], corrupt)}. "
                    f"{self._manual()}."
                )
        names, files, values = read_attributes(attr_path)
        if self.attribute not in names:
            raise ConfigError(
                f"data.attribute={self.attribute!r} is not a CelebA attribute; {attr_path.name} "
                f"has {names}."
            )
        column = names.index(self.attribute)
        labels = torch.tensor([int(row[column] > 0) for row in values], dtype=torch.long)
        images = self._images_folder()
        paths, listing, absent = [], [], []
        for name in files:
            try:
                st = os.stat(images / name)
            except OSError:
                absent.append(name)
                continue
            paths.append(str(images / name))
            listing.append((name, st.st_size, st.st_mtime_ns))
        if absent:
            raise DataError(
                f"CelebA: {len(absent)} image(s) listed in {attr_path} are missing from {images}, "
                f"e.g. {absent[0]}. Extract them, or remove their rows from {attr_path.name}."
            )
        every = FileSplit(paths, labels, listing)
        layout = "official" if official else ("CSV" if attr_path.suffix == ".csv" else "partial")
        facts = {"copy": f"{self.folder} ({layout} layout, {len(files)} images)"}
        splits = self._partitions(every, files, facts)
        class_names = [f"not_{self.attribute.lower()}", self.attribute.lower()]
        return SourceData(splits, class_names, images, facts)

    def _partitions(self, every: FileSplit, files: list[str], facts: dict) -> dict[str, FileSplit]:
        """The official partitions (with the subsets), or all of it as train when val or test
        would be empty (the data module then divides it by ``data.split``)."""
        path = _find(self.folder, "list_eval_partition")
        codes = read_partition(path) if path is not None else {}
        unlisted = [f for f in files if f not in codes]
        if path is not None and unlisted and len(unlisted) < len(files):
            raise DataError(
                f"{path} has no partition for {len(unlisted)} listed image(s), e.g. {unlisted[0]}; "
                "fix it, or delete it to have the split drawn from data.split."
            )
        code = torch.tensor([codes.get(f, 0) for f in files])
        parts = {s: every.subset(torch.nonzero(code == c).flatten()) for s, c in PARTITIONS.items()}
        if not len(parts["val"]) or not len(parts["test"]):
            reason = f"{path.name} leaves val or test empty" if path else "no partition file"
            facts["partition"] = f"{reason}: seeded split by data.split; subsets not applied"
            log.warning("CelebA in %s: %s.", self.folder, facts["partition"])
            return {"train": every}
        facts["partition"] = f"official partitions of {path.name if path else '?'}"
        for split, n in self.subsets.items():
            if n is not None:
                if n > len(parts[split]):
                    raise ConfigError(
                        f"data.{split}_subset={n} exceeds the {len(parts[split])} images of the "
                        f"CelebA {split} partition."
                    )
                parts[split] = parts[split].subset(torch.arange(n))
        return parts
