"""``data=image_folder data.root=DIR`` alone: class names and image size come from the folder,
are recorded in the checkpoint, and eval uses the recorded ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnlab.data.source import TensorSplit
from cnnlab.errors import ConfigError
from datafiles import write_image_folder

from conftest import Compose, run_cli


def test_image_folder_with_only_a_root_trains_and_records_what_it_read(tmp_path: Path) -> None:
    images, run = tmp_path / "images", tmp_path / "run"
    write_image_folder(images, classes=("cat", "dog"), per_class=12, size=(12, 12))
    result = run_cli(
        "cnnlab.train",
        "data=image_folder",
        f"data.root={images}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["class_names"] == ["cat", "dog"] and metrics["data"]["image_size"] == 12
    ckpt = run / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)["cnnlab"]["config"]["data"]
    assert saved["class_names"] == ["cat", "dog"] and saved["image_size"] == 12

    from cnnlab.eval import evaluate

    out = evaluate([f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}", "accelerator=cpu"])
    assert 0 <= out["metrics"]["test/acc"] <= 1
    write_image_folder(images, classes=("fox",), per_class=2, size=(12, 12))
    with pytest.raises(
        ConfigError, match=r"classes \['cat', 'dog', 'fox'\].*class_names=\['cat', 'dog'\]"
    ):
        evaluate([f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}", "accelerator=cpu"])


def test_non_square_images_need_an_image_size(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from cnnlab.data.image_folder import fill_from_folder

    write_image_folder(tmp_path, classes=("a", "b"), per_class=1, size=(20, 24))
    data = OmegaConf.create(
        {
            "source": "x.ImageFolderSource",
            "root": str(tmp_path),
            "class_names": "???",
            "image_size": "???",
        }
    )
    with pytest.raises(ConfigError, match=r"20x24, not square; set data\.image_size"):
        fill_from_folder(data)
    data.image_size = 16
    fill_from_folder(data)
    assert data.class_names == ["a", "b"] and data.image_size == 16


def test_readme_dataset_walkthrough_preset_trains(tmp_path: Path) -> None:
    """The README's "A dataset" file and command, as written there, on three tiny classes."""
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### A dataset", 1)[1].split("\n## ", 1)[0]
    (preset,) = re.findall(r"```yaml\n(# conf/data/flowers\.yaml\n.*?)```", section, re.S)
    (command,) = re.findall(r"```bash\n(python -m cnnlab\.train .*?)\n```", section, re.S)
    extra = tmp_path / "conf"
    (extra / "data").mkdir(parents=True)
    (extra / "data" / "flowers.yaml").write_text(preset)
    write_image_folder(
        tmp_path / "data" / "flowers",
        classes=("daisy", "rose", "tulip"),
        per_class=8,
        size=(30, 20),
    )
    args = command.split()[3:]
    assert args == ["data=flowers", "paths.data_dir=DIR"]
    run = tmp_path / "run"
    result = run_cli(
        "cnnlab.train",
        "data=flowers",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.searchpath=[file://{extra}]",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["data"]["class_names"] == ["daisy", "rose", "tulip"]
    assert metrics["data"]["storage"] == "files" and metrics["data"]["image_size"] == 64


def test_cifar_experiments_run_on_the_jpeg_folder_copy(tmp_path: Path) -> None:
    """``experiment=dlwpt_net paths.data_dir=DIR`` with only ``DIR/cifar10-jpeg`` there."""
    from cnnlab.data.cifar import CLASSES

    from conftest import train_in_process

    for split, n in (("train", 3), ("test", 2)):
        write_image_folder(
            tmp_path / "data" / "cifar10-jpeg" / split,
            classes=tuple(CLASSES),
            per_class=n,
            size=(32, 32),
        )
    overrides = ["experiment=dlwpt_net", f"paths.data_dir={tmp_path / 'data'}"]
    metrics = train_in_process(
        [
            *overrides,
            f"paths.cache_dir={tmp_path / 'cache'}",
            "+trainer.fast_dev_run=true",
            "logger=none",
        ],
        tmp_path / "run",
    )
    assert metrics["status"] == "completed"
    assert metrics["data"]["sizes"] == {"train": 6, "val": 4, "test": 4}  # airplane + bird
    assert "cifar10-jpeg (one JPEG per image)" in metrics["data"]["copy"]


def test_a_run_leaves_no_dataloader_workers_behind(tmp_path: Path) -> None:
    """Persistent workers are stopped when the run ends (a later run in the same process, a
    basic-launcher sweep or a notebook, would otherwise wait 5 s on each one's shutdown)."""
    import multiprocessing

    from conftest import train_in_process

    write_image_folder(tmp_path / "images", per_class=12, size=(16, 16))
    before = set(multiprocessing.active_children())
    args = [
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.class_names=[cat,dog]",
        "data.image_size=16",
        "data.storage=files",
        "data.num_workers=2",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
    ]
    assert train_in_process(args, tmp_path / "run")["status"] == "completed"
    assert set(multiprocessing.active_children()) - before == set()


def test_nested_images_are_the_class_s_and_links_to_nothing_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import os

    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from cnnlab.data.image_folder import ImageFolderSource

    images = tmp_path / "images"
    write_image_folder(images, classes=("cat", "dog"), per_class=2, size=(8, 8))
    (images / "cat" / "nested" / "deeper").mkdir(parents=True)
    (images / "cat" / "0000.jpg").rename(images / "cat" / "nested" / "deeper" / "x.jpg")
    (images / "cat" / "nested" / "loop").symlink_to(images / "cat")  # followed once, not forever
    (images / "cat" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (images / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with caplog.at_level(logging.WARNING):
        data = ImageFolderSource(str(images)).load()
    listed = [name for name, _, _ in data.splits["train"].listing]
    assert listed == ["cat/0001.jpg", "cat/nested/deeper/x.jpg", "dog/0000.jpg", "dog/0001.jpg"]
    assert data.splits["train"].labels.tolist() == [0, 0, 1, 1]
    # the files torchvision's ImageFolder reads, but for the links to nothing it would fail on
    walked = make_dataset(str(images), {"cat": 0, "dog": 1}, IMG_EXTENSIONS)
    readable = {(os.path.realpath(p), y) for p, y in walked if os.path.exists(p)}
    ours = zip(data.splits["train"].paths, data.splits["train"].labels.tolist(), strict=True)
    assert {(os.path.realpath(p), y) for p, y in ours} == readable
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"Skipped 2 image file(s) under {images} that are links to nothing (e.g. "
        f"{images / 'cat' / 'broken.jpg'}); fix or delete the links to silence this."
    ]


@pytest.mark.parametrize("storage", ["files", "memory"])
def test_evaluation_batches_of_a_class_by_class_folder_mix_the_classes(
    storage: str, tmp_path: Path, compose: Compose
) -> None:
    """An image folder lists its images class by class. Split by data.split or by a fraction,
    validation and test come in a seeded mixed order: batches normalized by their own
    statistics (module.eval_norm=batch) keep the class signal. Training keeps the folder's
    order (its loader shuffles)."""
    from cnnlab.build import build_datamodule

    write_image_folder(tmp_path / "pets", classes=("Cat", "Dog"), per_class=40, size=(8, 8))
    common = ["data=image_folder", f"data.root={tmp_path / 'pets'}", f"data.storage={storage}",
              "data.image_size=8", "data.num_workers=0", "data.eval_batch_size=10",
              f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    by_counts = ["data.split={train: 20, val: 30, test: rest}", "data.val_split=official"]
    by_fraction = ["data.split=null", "data.test_split=0.5", "data.val_split=0.5"]
    for rule in (by_counts, by_fraction):
        datamodule = build_datamodule(compose(*common, *rule))
        datamodule.prepare_data()
        datamodule.setup("fit")
        for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
            first = next(iter(loader))[1]
            assert 0 < int(first.sum()) < len(first), (rule, first.tolist())
        train = datamodule.splits["train"].labels
        assert torch.equal(train, train.sort().values), "training keeps the folder's order"


@pytest.mark.parametrize("storage", ["files", "memory"])
def test_a_folder_s_own_test_split_is_evaluated_in_mixed_batches(
    storage: str, tmp_path: Path, compose: Compose
) -> None:
    """A train/ + test/ folder (the CIFAR-10 JPEG copy's layout) lists its test images class by
    class. As validation (data.val_split=test, the DLWPT and GDL protocol) and as the test
    split, they come in a seeded order, the same every run, and metrics.json says so; the
    order of an already mixed split is left alone."""
    from cnnlab.build import build_datamodule
    from cnnlab.data.splits import arrange

    for part in ("train", "test"):
        write_image_folder(tmp_path / "pets" / part, classes=("Cat", "Dog", "Fox"), per_class=12,
                           size=(8, 8))  # fmt: skip
    common = ["data=image_folder", f"data.root={tmp_path / 'pets'}", f"data.storage={storage}",
              "data.image_size=8", "data.num_workers=0", "data.eval_batch_size=6",
              "data.split=null", f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    orders = []
    for rule in (["data.val_split=test"], ["data.val_split=0.25"], ["data.val_split=test"]):
        datamodule = build_datamodule(compose(*common, *rule))
        datamodule.prepare_data()
        datamodule.setup("fit")
        for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
            for _, labels in loader:  # every batch of 6 holds more than one class
                assert labels.unique().numel() > 1, (rule, labels.tolist())
        test = datamodule.splits["test"].labels
        assert sorted(test.tolist()) == [0] * 12 + [1] * 12 + [2] * 12
        assert "test in a seeded order" in datamodule.facts["splits"]
        orders.append(test.tolist())
    assert orders[0] == orders[1] == orders[2], "one fixed order, whatever the validation rule"
    # a class subset listed in another order is still grouped; a mixed split keeps its order
    grouped = TensorSplit(torch.zeros(6, 1, 2, 2), torch.tensor([1, 1, 1, 0, 0, 0]))
    mixed = TensorSplit(torch.arange(6.0).view(6, 1, 1, 1), torch.tensor([0, 1, 0, 1, 1, 0]))
    out, _ = arrange({"train": mixed, "test": grouped}, split=None, val_split="test",
                     test_split=0.0, seed=0, head=False, dataset="d")  # fmt: skip
    assert out["test"].labels.tolist() != [1, 1, 1, 0, 0, 0]
    out, how = arrange({"train": grouped, "test": mixed}, split=None, val_split="test",
                       test_split=0.0, seed=0, head=False, dataset="d")  # fmt: skip
    assert torch.equal(out["test"].images, mixed.images) and "seeded order" not in how
    assert torch.equal(out["train"].labels, grouped.labels), "training keeps the source's order"
