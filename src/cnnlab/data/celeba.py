"""CelebA faces with one binary attribute (default "Smiling") as the label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.data.files import FileDataModule, Samples
from cnnlab.data.sources import check_files, describe_problems, download
from cnnlab.errors import ConfigError, DataError

_OFFICIAL_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
# list_eval_partition.txt: 0 train, 1 valid, 2 test.
_PARTITIONS = {"train": 0, "val": 1, "test": 2}


class CelebAAttributeDataModule(FileDataModule):
    """``torchvision.datasets.CelebA`` (aligned images, ``target_type="attr"``), one attribute.

    The attribute's column is looked up by name in the header of ``list_attr_celeba.txt``
    (torchvision's ``attr_names``). Splits are the official partitions; ``train_subset``,
    ``val_subset`` and ``test_subset`` keep the first N images of a partition (null: all), as
    MLPT does with ``Subset(ds, torch.arange(N))``. Labels: 0 = without, 1 = with the attribute.
    """

    def __init__(
        self,
        *,
        root: str,
        attribute: str = "Smiling",
        download: bool = True,
        download_timeout_s: float = 30.0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.attribute = attribute
        self.download = download
        self.download_timeout_s = float(download_timeout_s)
        self.subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
        self._files_ok = False
        for split, n in self.subsets.items():
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ConfigError(f"data.{split}_subset={n!r} must be a positive count or null.")

    def prepare_data(self) -> None:
        """Download (on one process per node, before ``setup``) when files are missing."""
        self._ensure_files()

    def source_class_names(self) -> list[str]:
        name = self.attribute.lower()
        return [f"not_{name}", name]

    def _manual(self) -> str:
        from torchvision.datasets import CelebA

        folder = self.root / CelebA.base_folder
        return (
            f"To place the files by hand, download img_align_celeba.zip and "
            f"{', '.join(n for n, _ in self._table())} from {_OFFICIAL_PAGE} (Google Drive links "
            f"there), put them in {folder} and unzip img_align_celeba.zip there, so that "
            f"{folder}/img_align_celeba/000001.jpg exists"
        )

    def _table(self) -> list[tuple[str, str]]:
        from torchvision.datasets import CelebA

        return [(name, md5) for _, md5, name in CelebA.file_list if not name.endswith(".zip")]

    def _ensure_files(self) -> None:
        """Check the annotation files' MD5s and the image folder; download or explain."""
        from torchvision.datasets import CelebA

        if self._files_ok:
            return
        folder = self.root / CelebA.base_folder
        missing, corrupt = check_files(folder, self._table())
        if not (folder / "img_align_celeba").is_dir():
            missing.append("img_align_celeba/")
        manual = self._manual()
        if missing or corrupt:
            problems = describe_problems(folder, missing, corrupt)
            if not self.download:
                raise DataError(
                    f"CelebA files are {problems}. Set data.download=true to fetch them (needs the "
                    f"gdown package and Google Drive quota), or: {manual}."
                )
            download(
                "CelebA",
                lambda: CelebA(str(self.root), split="all", target_type="attr", download=True),
                root=self.root,
                problems=problems,
                manual=f"{manual}, then run again.",
                timeout_s=self.download_timeout_s,
            )
        self._files_ok = True

    def load_samples(self) -> tuple[dict[str, Samples], list[str]]:
        from torchvision.datasets import CelebA

        self._ensure_files()
        folder = self.root / CelebA.base_folder
        images = folder / "img_align_celeba"
        manual = self._manual()
        try:
            dataset = CelebA(str(self.root), split="all", target_type="attr", download=False)
        except (ValueError, IndexError, RuntimeError) as err:
            raise DataError(
                f"CelebA annotation files in {folder} cannot be parsed ({type(err).__name__}: "
                f"{err}); replace them with the published ones. {manual}."
            ) from None
        names = [n for n in dataset.attr_names if n]
        if self.attribute not in names:
            raise ConfigError(
                f"data.attribute={self.attribute!r} is not a CelebA attribute; "
                f"list_attr_celeba.txt has {names}."
            )
        labels = dataset.attr[:, names.index(self.attribute)].tolist()
        partition = _read_partition(folder / "list_eval_partition.txt")
        splits: dict[str, Samples] = {split: [] for split in _PARTITIONS}
        by_code = {code: split for split, code in _PARTITIONS.items()}
        for filename, label in zip(dataset.filename, labels, strict=True):
            splits[by_code[partition[filename]]].append((str(images / filename), int(label)))
        for split, n in self.subsets.items():
            if n is not None:
                if n > len(splits[split]):
                    raise ConfigError(
                        f"data.{split}_subset={n} exceeds the {len(splits[split])} images of the "
                        f"CelebA {split} partition."
                    )
                splits[split] = splits[split][:n]
        absent = [p for split in splits.values() for p, _ in split if not Path(p).is_file()]
        if absent:
            raise DataError(
                f"CelebA: {len(absent)} listed image(s) are missing, e.g. {absent[0]}; "
                f"img_align_celeba.zip was not fully extracted. {manual}."
            )
        return splits, self.source_class_names()


def _read_partition(path: Path) -> dict[str, int]:
    """``{image file: 0 train | 1 valid | 2 test}`` from ``list_eval_partition.txt``."""
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{number}: expected '<image> <0|1|2>', got {line!r}.")
        out[fields[0]] = int(fields[1])
    return out
