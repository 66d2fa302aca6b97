"""The real dataset loaders on tiny files written in each dataset's exact on-disk format."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10

from cnnlab.data import memory as memory_module
from cnnlab.data import per_sample as per_sample_module
from cnnlab.errors import ConfigError, DataError
from datafiles import (
    CIFAR10_CLASSES,
    md5,
    use_md5s_for_celeba,
    use_md5s_for_cifar,
    write_celeba,
    write_cifar10,
    write_corrupt_image,
    write_image_folder,
    write_mnist,
)
from forkrun import run_module

from conftest import ROOT, compose_config, datamodule


@pytest.fixture
def cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    root = tmp_path / "data"
    info = write_cifar10(root)
    use_md5s_for_cifar(monkeypatch, info["md5"])
    return root, info


def cifar_module(root: Path, *overrides: str, data: str = "cifar10"):
    return datamodule(f"data={data}", f"paths.data_dir={root}", "data.download=false", *overrides)


# ---- CIFAR-10 / CIFAR-2 -----------------------------------------------------------------------
def test_bundled_digits_are_the_uci_test_set_scaled_to_uint8() -> None:
    from cnnlab.data.digits import DIGITS_FILE, DigitsSource

    # the bytes scikit-learn ships as sklearn/datasets/data/digits.csv.gz
    digest = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
    assert hashlib.sha256(DIGITS_FILE.read_bytes()).hexdigest() == digest
    data = DigitsSource().load()
    images, labels = data.splits["train"].images, data.splits["train"].labels
    assert images.dtype == torch.uint8 and images.shape == (1797, 1, 8, 8)
    assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # the first row is a 0: counts 0-16 scaled by 255/16, e.g. 5 -> 80, 13 -> 207
    assert labels[0] == 0 and images[0, 0, 0, 2:4].tolist() == [80, 207]
    assert images.max() == 255 and data.class_names == [str(n) for n in range(10)]


def test_cifar10_decodes_pickles_into_uint8_nchw(cifar: tuple[Path, dict]) -> None:
    root, info = cifar
    dm = cifar_module(root, "data.val_split=test")
    dm.setup("fit")
    x, y = dm.splits["train"].images, dm.splits["train"].labels
    assert x.dtype == torch.uint8 and x.shape == (100, 3, 32, 32) and y.dtype == torch.int64
    expected = torch.from_numpy(info["train"][0]).permute(0, 3, 1, 2)
    assert torch.equal(x, expected) and y.tolist() == info["train"][1]
    assert dm.describe()["class_names"] == CIFAR10_CLASSES
    assert dm.describe()["sizes"] == {"train": 100, "test": 20, "val": 20}


def test_cifar2_keeps_airplane_and_bird_relabelled_0_1(cifar: tuple[Path, dict]) -> None:
    root, info = cifar
    dm = cifar_module(root, "data.val_split=test", data="cifar2")  # DLWPT's split
    dm.setup("fit")
    assert dm.class_names == ["airplane", "bird"] and dm.num_classes == 2
    source = torch.tensor(info["train"][1])
    train_x, train_y = dm.splits["train"].images, dm.splits["train"].labels
    assert len(train_y) == int(((source == 0) | (source == 2)).sum())
    images = torch.from_numpy(info["train"][0]).permute(0, 3, 1, 2)
    assert torch.equal(train_x[train_y == 0], images[source == 0])  # airplane -> 0
    assert torch.equal(train_x[train_y == 1], images[source == 2])  # bird -> 1
    assert dm.splits["val"] is dm.splits["test"]  # val_split: test
    assert set(dm.splits["test"].labels.tolist()) == {0, 1}
    # DLWPT's fixed CIFAR-10 statistics, not those of the subset.
    assert dm.mean.tolist() == pytest.approx([0.4915, 0.4823, 0.4468])
    assert dm.std.tolist() == pytest.approx([0.2470, 0.2435, 0.2616])


def test_unknown_class_lists_the_valid_names(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    dm = cifar_module(root, "data.classes=[airplane,unicorn]", "data.class_names=[airplane,x]")
    with pytest.raises(ConfigError, match="unicorn") as err:
        dm.setup("fit")
    assert "Valid class names" in str(err.value) and "truck" in str(err.value)


def test_seeded_splits_have_the_configured_sizes_and_reproduce(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    first, again, other = (
        cifar_module(root, "data.val_split=0.2", f"data.split_seed={s}") for s in (3, 3, 4)
    )
    for dm in (first, again, other):
        dm.setup("fit")
    assert first.describe()["sizes"] == {"train": 80, "val": 20, "test": 20}
    assert torch.equal(first.splits["val"].images, again.splits["val"].images)
    assert not torch.equal(first.splits["val"].images, other.splits["val"].images)
    # train and val partition the training set
    both = torch.cat([first.splits["train"].images, first.splits["val"].images]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 100


def test_cifar_stats_are_the_train_split_channel_statistics(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    dm = cifar_module(root, "data/normalize=cifar_stats", "data.val_split=0.2")
    dm.setup("fit")
    pixels = dm.splits["train"].images.transpose(0, 1).flatten(1).double() / 255
    assert dm.mean.tolist() == pytest.approx(pixels.mean(1).tolist(), abs=1e-6)
    assert dm.std.tolist() == pytest.approx(pixels.std(1).tolist(), abs=1e-6)
    batch = dm.on_after_batch_transfer((dm.splits["train"].images, dm.splits["train"].labels), 0)
    assert batch[0].dtype == torch.float32
    assert batch[0].mean(dim=(0, 2, 3)).tolist() == pytest.approx([0, 0, 0], abs=1e-5)
    assert batch[0].std(dim=(0, 2, 3)).tolist() == pytest.approx([1, 1, 1], abs=1e-4)


def test_truncated_pickle_is_named(cifar: tuple[Path, dict], monkeypatch) -> None:
    root, info = cifar
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"corrupt or truncated.*: \S*data_batch_2\. "):
        cifar_module(root).setup("fit")
    # Even a file that passes the MD5 check but does not unpickle is named.
    use_md5s_for_cifar(monkeypatch, {**info["md5"], "data_batch_2": md5(path)})
    with pytest.raises(DataError, match=r"data_batch_2 cannot be read"):
        cifar_module(root).setup("fit")


def test_missing_files_without_download_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        cifar_module(tmp_path).setup("fit")
    message = str(err.value)
    assert "CIFAR-10" in message and "data_batch_1" in message and "batches.meta" in message
    assert CIFAR10.url in message and str(tmp_path) in message


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """No network: every urlopen fails like an unresolvable host; records the socket timeout."""
    timeouts: list[float | None] = []

    def urlopen(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return timeouts


@pytest.mark.parametrize("data", ["cifar10", "mnist"])
def test_offline_download_fails_fast_with_one_clear_message(
    tmp_path: Path, offline: list, data: str
) -> None:
    started = time.perf_counter()
    dm = datamodule(f"data={data}", f"paths.data_dir={tmp_path}", "data.download_timeout_s=7")
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert message.startswith(f"Could not download {'CIFAR-10' if data == 'cifar10' else 'MNIST'}")
    assert str(tmp_path) in message and "name resolution" in message
    if data == "cifar10":
        assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message
    else:
        assert "train-images-idx3-ubyte" in message and "MNIST/raw" in message
    assert offline and all(t == 7 for t in offline)  # every attempt ran under the timeout
    assert socket.getdefaulttimeout() is None  # and it was restored


def test_offline_celeba_download_explains_manual_placement(tmp_path, monkeypatch) -> None:
    import torchvision.datasets.celeba as tv_celeba

    def from_drive(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_celeba, "download_file_from_google_drive", from_drive)
    dm = datamodule("data=celeba_smile", f"paths.data_dir={tmp_path}")
    with pytest.raises(DataError, match="Could not download CelebA") as err:
        dm.setup("fit")
    assert "img_align_celeba.zip" in str(err.value) and "list_eval_partition.txt" in str(err.value)


# ---- MNIST -------------------------------------------------------------------------------
def test_mnist_reads_raw_and_gz_idx_files_identically(tmp_path: Path) -> None:
    raw_info = write_mnist(tmp_path / "raw", gz=False)
    write_mnist(tmp_path / "gz", gz=True)
    modules = []
    for kind in ("raw", "gz"):
        split = ["data.val_split=10", "data.val_split_mode=head"]  # MLPT's split, scaled down
        dm = datamodule("data=mnist", f"paths.data_dir={tmp_path / kind}", *split)
        dm.setup("fit")
        modules.append(dm)
    raw, gz = modules
    for split in ("train", "val", "test"):
        assert torch.equal(raw.splits[split].images, gz.splits[split].images)
    assert raw.splits["train"].images.shape == (50, 1, 28, 28)
    # val_split_mode: head -> the first 10 training images validate (MLPT)
    assert torch.equal(raw.splits["val"].images[:, 0], torch.from_numpy(raw_info["train"][0][:10]))
    assert raw.class_names == [str(i) for i in range(10)]


def test_truncated_idx_and_gz_are_named(tmp_path: Path) -> None:
    write_mnist(tmp_path / "a")
    path = tmp_path / "a" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is corrupt or truncated"):
        datamodule("data=mnist", f"paths.data_dir={tmp_path / 'a'}").setup("fit")
    write_mnist(tmp_path / "b", gz=True)
    gz = tmp_path / "b" / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz is corrupt or truncated"):
        datamodule("data=mnist", f"paths.data_dir={tmp_path / 'b'}").setup("fit")


# ---- CelebA -------------------------------------------------------------------------------
@pytest.fixture
def celeba(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    root = tmp_path / "data"
    info = write_celeba(root, partitions=(8, 4, 4))
    use_md5s_for_celeba(monkeypatch, info["md5"])
    return root, info


def test_celeba_smile_partitions_subsets_and_labels(celeba: tuple[Path, dict]) -> None:
    root, info = celeba
    dm = datamodule(
        "data=celeba_smile",
        f"paths.data_dir={root}",
        "data.download=false",
        "data.train_subset=6",
        "data.val_subset=3",
        "data.num_workers=0",
    )
    dm.setup("fit")
    assert dm.describe()["sizes"] == {"train": 6, "val": 3, "test": 4}
    train, val, test = info["smiling"]
    assert dm.splits["train"].labels.tolist() == train[:6]  # first N, Smiling column by name
    assert dm.splits["val"].labels.tolist() == val[:3]
    assert dm.splits["test"].labels.tolist() == test
    assert Path(dm.splits["val"].paths[0]).name == "000009.jpg"
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    # eval: CenterCrop 178 + Resize 64 is deterministic
    first, second = (next(iter(dm.test_dataloader()))[0] for _ in range(2))
    assert torch.equal(first, second)


def test_celeba_unknown_attribute_lists_the_header(celeba: tuple[Path, dict]) -> None:
    root, _ = celeba
    dm = datamodule(
        "data=celeba_smile",
        f"paths.data_dir={root}",
        "data.download=false",
        "data.attribute=Smiles",
        "data.train_subset=null",
        "data.val_subset=null",
    )
    with pytest.raises(ConfigError, match=r"Smiles.*Heavy_Makeup"):
        dm.setup("fit")


# ---- image folders ------------------------------------------------------------------------
def folder_module(root: Path, cache: Path, *overrides: str):
    return datamodule(
        "data=image_folder",
        f"data.root={root}",
        "data.class_names=[cat,dog]",
        "data.image_size=16",
        f"paths.cache_dir={cache}",
        "data.decode_workers=1",
        *overrides,
    )


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts how many images the in-memory image folder decodes."""
    calls: list[int] = []
    real = memory_module.decode_images

    def counting(paths, *args, **kwargs):
        calls.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(memory_module, "decode_images", counting)
    return calls


def test_image_folder_cache_hit_and_invalidation(tmp_path: Path, decode_calls: list) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    files = write_image_folder(root, per_class=10)
    first = folder_module(root, cache)
    first.setup("fit")
    assert decode_calls == [20] and first.storage.cache_hit is False
    assert first.describe()["sizes"] == {"test": 4, "train": 14, "val": 2}
    second = folder_module(root, cache)
    second.setup("fit")
    assert decode_calls == [20] and second.storage.cache_hit is True  # not decoded again
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split].images, second.splits[split].images)
    assert second.storage.cache_path is not None and second.storage.cache_path.parent == cache

    folder_module(root, cache, "data.image_size=8").setup("fit")  # other preprocessing
    assert decode_calls == [20, 20]
    write_image_folder(root, per_class=10, seed=1)  # same names and sizes, new content
    os.utime(files[3], ns=(0, files[3].stat().st_mtime_ns + 10**9))
    changed = folder_module(root, cache)
    changed.setup("fit")
    assert decode_calls == [20, 20, 20] and changed.storage.cache_hit is False
    files[0].unlink()
    folder_module(root, cache).setup("fit")
    assert decode_calls == [20, 20, 20, 19]
    cached = torch.load(changed.storage.cache_path, weights_only=True)
    assert cached["train_images"].dtype == torch.uint8 and cached["class_names"] == ["cat", "dog"]
    assert not list(cache.glob("*.tmp"))


def test_prepare_data_decodes_once_for_every_rank(tmp_path: Path, decode_calls: list) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    write_image_folder(root, per_class=5)
    rank0 = folder_module(root, cache)
    rank0.prepare_data()  # Lightning: local rank 0 only, the other ranks wait
    rank0.setup("fit")
    rank1 = folder_module(root, cache)
    rank1.setup("fit")
    assert decode_calls == [10] and rank1.storage.cache_hit is True
    assert torch.equal(rank0.splits["train"].images, rank1.splits["train"].images)


def test_image_folder_train_test_layout(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "f" / "train", per_class=6)
    write_image_folder(tmp_path / "f" / "test", per_class=2)
    dm = folder_module(tmp_path / "f", tmp_path / "c", "data.val_split=test")
    dm.setup("fit")
    assert dm.describe()["sizes"] == {"train": 12, "test": 4, "val": 4}
    write_image_folder(tmp_path / "f" / "test", classes=("cow",), per_class=1)
    with pytest.raises(DataError, match="same class folders"):
        folder_module(tmp_path / "f", tmp_path / "c").setup("fit")


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_image_skipped_with_one_warning_or_named_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, in_memory: bool
) -> None:
    root = tmp_path / "images"
    write_image_folder(root, per_class=10)
    write_corrupt_image(root / "dog" / "broken.jpg")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image, not counted")
    mode = f"data.storage={'memory' if in_memory else 'files'}"
    with caplog.at_level(logging.WARNING):
        dm = folder_module(root, tmp_path / "cache", mode, "data.num_workers=0")
        dm.setup("fit")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "kipped 2 undecodable image(s)" in warnings[0]
    assert "dog/broken.jpg" in warnings[0] and "dog/empty.jpg" in warnings[0]
    assert sum(dm.describe()["sizes"][s] for s in ("train", "val", "test")) == 20
    with pytest.raises(DataError, match=r"dog/broken\.jpg cannot be decoded.*on_bad_image=skip"):
        folder_module(root, tmp_path / "cache", mode, "data.on_bad_image=error").setup("fit")


def test_file_image_folder_checks_each_folder_once(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "images"
    write_image_folder(root, per_class=6)
    calls: list[int] = []
    real = per_sample_module.find_bad_images

    def counting(paths, workers):
        calls.append(len(paths))
        return real(paths, workers)

    monkeypatch.setattr(per_sample_module, "find_bad_images", counting)
    for _ in range(2):
        dm = folder_module(root, tmp_path / "cache", "data.storage=files", "data.num_workers=0")
        dm.setup("fit")
    assert calls == [12] and dm.storage.check_cache_hit is True
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8  # 12 - 2 test - 1 val
    assert labels.dtype == torch.int64


def test_class_names_must_match_the_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", classes=("cat", "dog", "fox"), per_class=3)
    with pytest.raises(ConfigError, match=r"classes \['cat', 'dog', 'fox'\]"):
        folder_module(tmp_path / "images", tmp_path / "cache").setup("fit")


def test_image_folder_requires_root_class_names_and_image_size() -> None:
    from omegaconf import OmegaConf

    data = compose_config("data=image_folder").data
    assert OmegaConf.missing_keys(data) == {"data.root", "data.class_names", "data.image_size"}
    assert data.num_classes == 0  # no interpolation error while class_names is unset


def test_in_memory_dataset_rejects_per_sample_transforms(cifar: tuple[Path, dict]) -> None:
    root, _ = cifar
    with pytest.raises(ConfigError, match=r"per-sample data\.transforms need data\.storage=files"):
        cifar_module(root, "data/transforms=mlpt_celeba")


def test_cats_vs_dogs_config_reads_a_pet_images_folder(tmp_path: Path) -> None:
    pets = tmp_path / "PetImages"
    write_image_folder(pets, classes=("Cat", "Dog"), per_class=10, size=(150, 120))
    write_corrupt_image(pets / "Cat" / "666.jpg")
    (pets / "Cat" / "Thumbs.db").write_bytes(b"\0" * 10)
    dm = datamodule(
        "data=cats_vs_dogs",
        "data/transforms=nb_cats_dogs",
        f"paths.data_dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'c'}",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.decode_workers=1",
    )
    dm.setup("fit")
    assert dm.describe()["sizes"] == {"train": 16, "val": 2, "test": 2}
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 128, 128)
    assert torch.equal(images[:, 0], images[:, 1])  # Grayscale(num_output_channels=3)
    first, second = (next(iter(dm.val_dataloader()))[0] for _ in range(2))
    assert torch.equal(first, second)  # no random transforms at eval


def test_missing_pet_images_folder_says_where_to_get_it(tmp_path: Path) -> None:
    dm = datamodule("data=cats_vs_dogs", f"paths.data_dir={tmp_path}")
    with pytest.raises(DataError, match=r"PetImages does not exist.*kagglecatsanddogs_5340\.zip"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "data", ["mnist", "cifar10", "cifar10_jpeg", "cifar2", "celeba_smile", "cats_vs_dogs"]
)
def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path: Path, data: str) -> None:
    not_a_folder = tmp_path / "datasets.tar"
    not_a_folder.write_bytes(b"x")
    offline = [] if data == "cats_vs_dogs" else ["data.download=false"]
    with pytest.raises(ConfigError) as err:
        dm = datamodule(f"data={data}", f"paths.data_dir={not_a_folder}", *offline)
        dm.prepare_data()
        dm.setup("fit")
    message = str(err.value)
    assert f"leads to {not_a_folder}, which is a file, not a folder" in message, message
    assert "Point paths.data_dir at the folder holding the datasets" in message


def test_testing_after_fit_does_not_read_the_dataset_again(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", per_class=6, size=(8, 8))
    dm = datamodule(
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.class_names=[cat,dog]",
        "data.image_size=8",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    dm.prepare_data()
    dm.setup("fit")
    # Lightning calls both hooks again for trainer.test(): the set-up data serves it
    dm.source.load = dm.source.prepare = lambda: pytest.fail("the dataset was read again")
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_dataloader()) > 0


# ---- end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize("in_memory", [True, False])
def test_train_one_epoch_on_an_image_folder(tmp_path: Path, in_memory: bool) -> None:
    write_image_folder(tmp_path / "images", per_class=24, size=(12, 12))
    run = tmp_path / "run"
    args = [
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.class_names=[cat,dog]",
        "data.image_size=12",
        f"data.storage={'memory' if in_memory else 'files'}",
        "data.num_workers=1",
        "data.log_augmented_grid=true",
        "data/augment=flip_crop",
        f"hydra.run.dir={run}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "callbacks.progress_bar=null",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = run_module(
        "cnnlab.train",
        [*args],
        cwd=ROOT,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test/acc"] is not None
    assert metrics["data"]["class_names"] == ["cat", "dog"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert events.Tags()["images"] == ["image_folder/augmented_train"]


def test_decode_in_processes_matches_inline_and_reads_pil_only_formats(tmp_path: Path) -> None:
    from cnnlab.data.decode import decode_images

    files = write_image_folder(tmp_path, per_class=3, size=(20, 10), ext=".png")
    files += write_image_folder(tmp_path / "bmp", classes=("x",), per_class=2, ext=".bmp")
    paths = [str(p) for p in files]
    one, bad = decode_images(paths, 8, 1, workers=1)
    two, _ = decode_images(paths, 8, 1, workers=3)
    assert not bad and one.shape == (8, 1, 8, 8) and one.dtype == np.uint8
    assert np.array_equal(one, two)
    with Image.open(files[-1]) as bmp:
        expected = np.asarray(bmp.convert("L").resize((8, 8), Image.BILINEAR))
    assert np.abs(one[-1, 0].astype(int) - expected).max() <= 12  # PIL-decoded, then resized


def test_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    from cnnlab.data.cache import cached

    path = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(2)}, path)
    path.write_bytes(path.read_bytes()[:50])
    _, hit = cached(path, lambda: {"a": torch.ones(2)})
    assert not hit and torch.equal(cached(path, dict)[0]["a"], torch.ones(2))
