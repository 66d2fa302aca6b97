"""CIFAR-10 (and its class subsets such as CIFAR-2) from torchvision's python pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cnnlab.data.base import Split
from cnnlab.data.sources import DownloadableDataModule, check_files, describe_problems, download
from cnnlab.errors import DataError


class CIFAR10DataModule(DownloadableDataModule):
    """``torchvision.datasets.CIFAR10`` decoded once into ``uint8 (N, 3, 32, 32)`` tensors.

    ``root`` holds (or receives, with ``download``) ``cifar-10-batches-py/``; torchvision checks
    every file's MD5 before reading it. Missing, corrupt or undownloadable files end in one
    :class:`DataError` that names them and says how to place them by hand.
    """

    def _manual(self) -> str:
        from torchvision.datasets import CIFAR10

        return (
            f"To place the files by hand, download {CIFAR10.url} (MD5 {CIFAR10.tgz_md5}) and "
            f"extract it into {self.root} (tar xzf {CIFAR10.filename} -C {self.root}), so that "
            f"{self.root / CIFAR10.base_folder}/data_batch_1 exists"
        )

    def _table(self) -> list[tuple[str, str]]:
        from torchvision.datasets import CIFAR10

        table = [(n, m) for n, m in CIFAR10.train_list + CIFAR10.test_list]
        return [*table, (CIFAR10.meta["filename"], CIFAR10.meta["md5"])]

    def _ensure_files(self) -> None:
        """Check every file's MD5; download the archive (``download``) or explain."""
        from torchvision.datasets import CIFAR10

        if self._files_ok:
            return
        folder = self.root / CIFAR10.base_folder
        manual = self._manual()
        missing, corrupt = check_files(folder, self._table())
        if missing or corrupt:
            problems = describe_problems(folder, missing, corrupt)
            if not self.download:
                raise DataError(
                    f"CIFAR-10 files are {problems}. Set data.download=true to fetch them, or: "
                    f"{manual}; delete corrupt files first."
                )
            download(
                "CIFAR-10",
                lambda: CIFAR10(str(self.root), train=True, download=True),
                root=self.root,
                problems=problems,
                manual=f"{manual}, then run again.",
                timeout_s=self.download_timeout_s,
            )
        self._files_ok = True

    def load_splits(self) -> tuple[dict[str, Split], list[str]]:
        from torchvision.datasets import CIFAR10

        self._ensure_files()
        folder = self.root / CIFAR10.base_folder
        splits: dict[str, Split] = {}
        classes: list[str] = []
        for split, train in (("train", True), ("test", False)):
            try:
                dataset = CIFAR10(str(self.root), train=train, download=False)
            except (pickle.UnpicklingError, EOFError, ValueError, KeyError, RuntimeError) as err:
                bad = _unreadable_pickle(folder, [n for n, _ in self._table()]) or str(folder)
                raise DataError(
                    f"CIFAR-10 file {bad} cannot be read ({type(err).__name__}: {err}); it is "
                    f"corrupt or not a CIFAR-10 python pickle. Replace it: {self._manual()}."
                ) from None
            images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
            splits[split] = (images, torch.as_tensor(dataset.targets, dtype=torch.long))
            classes = list(dataset.classes)
        return splits, classes


def _unreadable_pickle(folder: Path, names: list[str]) -> Path | None:
    """The first of ``names`` in ``folder`` that does not unpickle as torchvision reads it."""
    for name in names:
        path = folder / name
        try:
            with path.open("rb") as f:
                pickle.load(f, encoding="latin1")
        except Exception:  # any failure is the answer we are looking for
            return path
    return None
