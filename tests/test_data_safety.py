"""Hostile and read-only dataset files: nothing untrusted is unpickled, nothing is written.

Every file format the data layer reads gets a pickle whose loading would run code (it would
create a marker file); in every code path the marker must stay absent and the bad file be named.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from cnnlab.errors import DataError
from datafiles import (
    md5,
    use_md5s_for_celeba,
    use_md5s_for_cifar,
    write_celeba,
    write_cifar10,
    write_image_folder,
    write_mnist,
)

from conftest import datamodule


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded."""
    data = pickle.dumps({"data": _RunsCode(marker), "labels": [0]}, protocol=2)
    pickle.loads(data)  # the payload works: it does run code when unpickled without limits
    assert marker.is_file()
    marker.unlink()
    return data


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
@pytest.mark.parametrize("md5_listed", [True, False])
def test_cifar_batch_payload_never_runs(tmp_path, monkeypatch, name, md5_listed) -> None:
    root, marker = tmp_path / "data", tmp_path / "ran"
    info = write_cifar10(root)
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(payload(marker))
    # md5_listed: the file passes the MD5 check (a swapped table or a file changed between
    # checks) and reaches the unpickler; else the MD5 check names it first.
    use_md5s_for_cifar(monkeypatch, {**info["md5"], name: md5(path)} if md5_listed else info["md5"])
    dm = datamodule("data=cifar10", f"paths.data_dir={root}", "data.download=false")
    expected = r"not allowed" if md5_listed else r"MD5 differs"
    with pytest.raises(DataError, match=expected) as err:
        dm.setup("fit")
    assert name in str(err.value) and not marker.exists()
    # the loader's own read (as after a download) checks the MD5 on the bytes it unpickles
    from cnnlab.data.cifar import read_batch

    with pytest.raises(DataError, match=name):
        read_batch(path, md5=None if md5_listed else info["md5"][name])
    assert not marker.exists()


@pytest.mark.parametrize("storage", ["memory", "files"])
def test_cache_file_payload_is_refused_and_rebuilt(tmp_path, caplog, storage) -> None:
    write_image_folder(tmp_path / "images", per_class=5)
    cache, marker = tmp_path / "cache", tmp_path / "ran"
    args = [
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        f"paths.cache_dir={cache}",
        "data.image_size=8",
        f"data.storage={storage}",
        "data.num_workers=0",
        "data.decode_workers=1",
    ]
    datamodule(*args).setup("fit")
    (cached,) = cache.glob("*.pt")
    cached.write_bytes(payload(marker))
    dm = datamodule(*args)
    dm.setup("fit")
    assert not marker.exists()
    hit = dm.storage.cache_hit if storage == "memory" else dm.storage.check_cache_hit
    assert hit is False and "unreadable cache file" in caplog.text.lower()
    assert torch.load(cached, weights_only=True)  # rebuilt in place, a plain dict again


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_payload_is_named_as_corrupt(tmp_path, gz) -> None:
    marker = tmp_path / "ran"
    write_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (tmp_path / "MNIST" / "raw" / name).write_bytes(payload(marker))
    with pytest.raises(DataError, match=rf"{name} is corrupt or truncated"):
        datamodule("data=mnist", f"paths.data_dir={tmp_path}", "data.val_split=10").setup("fit")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["list_attr_celeba.txt", "list_eval_partition.txt"])
def test_celeba_payload_is_named(tmp_path, monkeypatch, name) -> None:
    marker = tmp_path / "ran"
    info = write_celeba(tmp_path, (8, 4, 4), layout="partial")
    use_md5s_for_celeba(monkeypatch, info["md5"])
    (tmp_path / "celeba" / name).write_bytes(payload(marker))
    dm = datamodule("data=celeba_smile", f"paths.data_dir={tmp_path}", "data.download=false")
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        dm.setup("fit")
    assert not marker.exists()


def test_image_file_payload_is_an_undecodable_image(tmp_path, caplog) -> None:
    marker = tmp_path / "ran"
    write_image_folder(tmp_path / "images", per_class=5)
    (tmp_path / "images" / "cat" / "evil.jpg").write_bytes(payload(marker))
    dm = datamodule(
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "paths.cache_dir=null",
        "data.image_size=8",
        "data.decode_workers=1",
    )
    dm.setup("fit")
    assert "cat/evil.jpg" in caplog.text and not marker.exists()


# ---- read-only data folders ----------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in folder.rglob("*")
    }


def read_only(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Remove every write permission under ``folder``; what it holds, to compare later.

    (As root the permissions do not stop writes, so the snapshot is what the test checks.)
    """
    for p in [*folder.rglob("*"), folder]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return snapshot(folder)


def writable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def write_dataset(kind: str, data: Path) -> list[str]:
    """Files for ``kind`` under ``data``; the overrides that read them."""
    if kind == "mnist_gz":
        write_mnist(data, gz=True)
        return ["data=mnist", "data.val_split=10", "data.download=false"]
    if kind == "cifar":
        write_cifar10(data)
        return ["data=cifar10", "data.download=false"]
    if kind == "cifar_jpeg":
        write_image_folder(
            data / "cifar10-jpeg" / "train", classes=_CIFAR, per_class=2, size=(32, 32)
        )
        write_image_folder(
            data / "cifar10-jpeg" / "test", classes=_CIFAR, per_class=1, size=(32, 32)
        )
        return ["data=cifar2", "data.val_split=test"]
    if kind == "celeba":
        write_celeba(data, (12, 0, 0), layout="partial", scale=0.5)
        return ["experiment=mlpt_smile_cnn", "data.download=false"]
    write_image_folder(data / "PetImages", classes=("Cat", "Dog"), per_class=6)
    return ["data=cats_vs_dogs"]


_CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.mark.parametrize("kind", ["mnist_gz", "cifar", "cifar_jpeg", "celeba", "cats_vs_dogs"])
def test_loaders_never_write_into_the_data_folder(tmp_path, monkeypatch, kind) -> None:
    data = tmp_path / "data"
    overrides = write_dataset(kind, data)
    if kind == "cifar":
        from datafiles import md5 as md5_of

        folder = data / "cifar-10-batches-py"
        use_md5s_for_cifar(monkeypatch, {p.name: md5_of(p) for p in folder.iterdir()})
    before = read_only(data)
    try:
        dm = datamodule(
            *overrides,
            f"paths.data_dir={data}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data.num_workers=0",
            "data.decode_workers=1",
        )
        dm.prepare_data()
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
    finally:
        writable(data)
    assert os.path.isdir(data) and snapshot(data) == {
        k: (size, mtime, mode | stat.S_IWUSR) for k, (size, mtime, mode) in before.items()
    }
