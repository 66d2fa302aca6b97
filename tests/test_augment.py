"""Augmentation: batched on-device presets, per-sample v2 presets, and the debug image grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from cnnlab.data.augment import BatchAugment
from cnnlab.data.datamodule import ClassificationDataModule
from cnnlab.data.memory import TensorBatchLoader
from cnnlab.data.per_sample import build_pipeline
from cnnlab.data.synthetic import SyntheticSource
from cnnlab.errors import ConfigError

from conftest import compose_config


def synthetic(augment: BatchAugment, **kwargs) -> ClassificationDataModule:
    dm = ClassificationDataModule(
        source=SyntheticSource(
            num_train=64, num_test=16, num_classes=4, in_channels=3, image_size=16
        ),
        name="synthetic",
        in_channels=3,
        image_size=16,
        class_names=["0", "1", "2", "3"],
        batch_size=16,
        normalize={"mean": [0.5], "std": [0.25]},
        augment=augment,
        val_split=0.25,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def fake_trainer(training: bool, loggers: list | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        training=training, is_global_zero=True, loggers=loggers or [], global_step=0
    )


# ---- batched, on the device ------------------------------------------------------------------
def test_flip_crop_preset_is_the_batched_cifar_augmentation() -> None:
    augment = instantiate(compose_config("data=cifar10", "data/augment=flip_crop").data.augment)
    assert isinstance(augment, BatchAugment)
    assert augment.hflip and augment.crop_padding == 4 and augment.enabled
    assert not instantiate(compose_config("data=cifar10").data.augment).enabled


def test_batch_augment_keeps_shape_and_dtype_and_differs_per_sample() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 16, 16)
    batch = image.expand(64, -1, -1, -1).contiguous()
    out = BatchAugment(hflip=True, crop_padding=4, cutout=4)(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    distinct = torch.unique(out.flatten(1), dim=0)
    assert len(distinct) > 32  # per-sample random crops/flips/cutouts, not one per batch
    assert torch.equal(BatchAugment()(batch), batch)


def test_alternate_flip_shows_every_image_both_ways_in_consecutive_epochs() -> None:
    images = torch.arange(40 * 4, dtype=torch.uint8).reshape(40, 1, 1, 4)  # rows tell their flip
    labels = torch.arange(40)
    epoch = [0]
    loader = TensorBatchLoader(
        images, labels, 8, shuffle=True, seed=3, epoch_fn=lambda: epoch[0], alternate_flip=True
    )

    def flipped() -> dict[int, bool]:
        seen = {}
        for x, y in loader:
            for row, label in zip(x, y, strict=True):
                assert torch.equal(row, images[label]) or torch.equal(row, images[label].flip(-1))
                seen[int(label)] = not torch.equal(row, images[label])
        return seen

    first = flipped()
    assert len(first) == 40 and 10 < sum(first.values()) < 30  # a random half
    epoch[0] = 1
    second = flipped()
    assert all(second[i] != first[i] for i in range(40))  # the other half
    epoch[0] = 2
    assert flipped() == first  # every other epoch the same half; a resumed run agrees
    again = TensorBatchLoader(
        images, labels, 8, shuffle=True, seed=3, epoch_fn=lambda: 2, alternate_flip=True
    )
    loader = again
    assert flipped() == first
    # wired through the preset key: the in-memory training loader flips, random flips are off
    dm = synthetic(BatchAugment(hflip="alternate", crop_padding=2))
    dm.trainer = None
    assert dm.train_dataloader()._flip_first is not None and not dm.augment.hflip
    assert dm.val_dataloader()._flip_first is None
    with pytest.raises(ConfigError, match="hflip=alternate needs synthetic in memory"):
        synthetic(BatchAugment(hflip="alternate"), storage="files")


def test_augmentation_only_while_training() -> None:
    dm = synthetic(BatchAugment(hflip=True, crop_padding=4))
    x, y = dm.splits["train"].images, dm.splits["train"].labels
    expected = (x.float() / 255 - 0.5) / 0.25
    dm.trainer = fake_trainer(training=False)
    images, labels = dm.on_after_batch_transfer((x, y), 0)
    # one multiply-add instead of subtract-then-divide: float32 rounding differs by ~1e-7
    assert torch.allclose(images, expected, atol=1e-6) and torch.equal(labels, y)
    dm.trainer = fake_trainer(training=True)
    images, _ = dm.on_after_batch_transfer((x, y), 0)
    assert images.shape == expected.shape and images.dtype == torch.float32
    assert not torch.allclose(images, expected)


# ---- per sample, in DataLoader workers -------------------------------------------------------
def face() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def mlpt_celeba_pipelines() -> tuple:
    data = compose_config("data=celeba_smile", "data/transforms=mlpt_celeba").data
    transforms = instantiate(data.transforms, _convert_="all")
    return build_pipeline(transforms["train"], 64), build_pipeline(transforms["eval"], 64)


def test_celeba_preset_random_crop_flip_resize_per_sample() -> None:
    train, evaluate = mlpt_celeba_pipelines()
    image = face()
    torch.manual_seed(0)
    outs = [train(image) for _ in range(8)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.uint8 for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 1
    assert torch.equal(evaluate(image), evaluate(image))
    assert evaluate(image).shape == (3, 64, 64)


def test_crops_scale_with_the_image_so_half_size_copies_see_the_same_face() -> None:
    from torchvision.transforms import v2

    train, evaluate = mlpt_celeba_pipelines()
    full = face()
    half = full.resize((89, 109), Image.BILINEAR)
    # CenterCrop 178 of the 178x218 face is CenterCrop 89 of the half-size one, then Resize 64.
    expected = build_pipeline([v2.CenterCrop(89), v2.Resize([64, 64])], 64)(half)
    assert torch.equal(evaluate(half), expected)
    assert torch.equal(
        evaluate(full), build_pipeline([v2.CenterCrop(178), v2.Resize([64, 64])], 64)(full)
    )
    assert train(half).shape == (3, 64, 64)


def test_cats_dogs_preset_outputs_grey_in_three_channels() -> None:
    data = compose_config("data=cats_vs_dogs", "data/transforms=nb_cats_dogs").data
    train = build_pipeline(instantiate(data.transforms.train, _convert_="all"), 128)
    out = train(face())
    assert out.shape == (3, 128, 128) and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_transforms_none_trains_file_datasets_on_the_eval_pipeline() -> None:
    data = compose_config("data=celeba_smile").data
    assert data.transforms.train is None and not instantiate(data.augment).enabled
    # and the experiment picks the book's pipeline
    assert compose_config("experiment=mlpt_smile_cnn").data.transforms.train is not None


# ---- debug grid ---------------------------------------------------------------------------
def test_augmented_grid_is_logged_once_to_tensorboard(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    dm = synthetic(BatchAugment(hflip=True), log_augmented_grid=True, grid_samples=9)
    x, y = dm.splits["train"].images, dm.splits["train"].labels
    dm.trainer = fake_trainer(training=False, loggers=[logger])
    dm.on_after_batch_transfer((x, y), 0)  # validation batches are not shown
    dm.trainer = fake_trainer(training=True, loggers=[logger])
    for _ in range(3):
        dm.on_after_batch_transfer((x, y), 0)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    images = events.Images("synthetic/augmented_train")
    assert len(images) == 1
    # 9 samples of 16x16 in a 3x3 grid with make_grid's 2-pixel padding
    assert (images[0].width, images[0].height) == (3 * 18 + 2, 3 * 18 + 2)


def test_grid_without_tensorboard_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    dm = synthetic(BatchAugment(), log_augmented_grid=True)
    dm.trainer = fake_trainer(training=True)
    x, y = dm.splits["train"].images, dm.splits["train"].labels
    dm.on_after_batch_transfer((x, y), 0)
    assert "no TensorBoard logger" in caplog.text


# ---- datasets kept on the training device ---------------------------------------------------
def test_keep_on_device_follows_the_training_device_and_its_free_memory(monkeypatch) -> None:
    storage = synthetic(BatchAugment()).storage
    nbytes = 1000
    gpu = torch.device("cuda", 0)
    free = 4 * nbytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    on_gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=gpu))
    assert storage.keep_on_device == "auto"
    assert storage.residence_device(on_gpu, nbytes) == gpu  # 1/4 of free <= 0.5
    storage.device_memory_fraction = 0.2
    assert storage.residence_device(on_gpu, nbytes) is None  # more than 20% of the free memory
    storage.keep_on_device = True
    assert storage.residence_device(on_gpu, nbytes) == gpu
    storage.keep_on_device = False
    assert storage.residence_device(on_gpu, nbytes) is None
    storage.keep_on_device = True
    on_cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert storage.residence_device(on_cpu, nbytes) is None


def test_bad_keep_on_device_values_are_named() -> None:
    with pytest.raises(ConfigError, match="keep_on_device='gpu'"):
        synthetic(BatchAugment(), keep_on_device="gpu")
    with pytest.raises(ConfigError, match=r"device_memory_fraction=1\.5"):
        synthetic(BatchAugment(), device_memory_fraction=1.5)


def test_batches_are_gathered_on_the_device_that_holds_the_dataset() -> None:
    # The "meta" device stands in for a GPU: the per-epoch permutation must follow the tensors
    # there, and every batch must be gathered there.
    images = torch.empty(10, 3, 4, 4, dtype=torch.uint8, device="meta")
    labels = torch.empty(10, dtype=torch.long, device="meta")
    batches = list(TensorBatchLoader(images, labels, 4, shuffle=True))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert all(x.device.type == "meta" and x.shape[1:] == (3, 4, 4) for x, _ in batches)


def test_shuffled_batches_are_the_permuted_images() -> None:
    images = torch.arange(10 * 2, dtype=torch.uint8).reshape(10, 2)
    labels = torch.arange(10)
    loader = TensorBatchLoader(images, labels, 3, shuffle=True, seed=5)
    order = torch.cat([y for _, y in loader])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert torch.equal(torch.cat([x for x, _ in loader]), images[order])
