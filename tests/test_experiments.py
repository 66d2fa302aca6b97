"""Every experiment of conf/experiment/ runs one fast_dev_run step on its own real data loader.

The datasets are files this module writes in each source's exact on-disk format (CIFAR-10
pickles, MNIST idx, the CelebA folder and attribute files, the PetImages folders), so each
experiment goes through the loader, the transforms, the model and the optimizer it names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from datafiles import (
    use_md5s_for_celeba,
    use_md5s_for_cifar,
    write_celeba,
    write_cifar10,
    write_image_folder,
    write_mnist,
)

from conftest import ROOT, train_in_process

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# What the tiny generated files need beyond the experiment's own settings.
FOR_TINY_FILES = {
    # the generated CelebA has 8/4/4 images, the text trains on the first 16,000 of 162,770
    "mlpt_smile_cnn": ["data.train_subset=8", "data.val_subset=4"],
    # 12 generated pets; the source's protocol trains on 468 and validates on 4,214
    "nb_cats_dogs_cnn": ["data.split={train:6,val:3,test:rest}"],
    "nb_resnet18_transfer": ["data.split={train:6,val:3,test:rest}"],
}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("data")
    # Enough images for the largest batch (cifar10_fast: 1024, drop_last) and for MLPT's
    # validation set of the first 10,000 MNIST training images.
    cifar = write_cifar10(root, per_batch=210, test=20)
    write_mnist(root, train=10_100, test=20)
    celeba = write_celeba(root)
    write_image_folder(root / "PetImages", classes=("Cat", "Dog"), per_class=6, size=(40, 30))
    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet18.pth")
    return root, cifar["md5"], celeba["md5"]


@pytest.fixture
def data_dir(data_files: tuple[Path, dict, dict], monkeypatch: pytest.MonkeyPatch) -> Path:
    root, cifar_md5, celeba_md5 = data_files
    use_md5s_for_cifar(monkeypatch, cifar_md5)
    use_md5s_for_celeba(monkeypatch, celeba_md5)
    return root


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_fast_dev_run_step(
    experiment: str, data_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        f"experiment={experiment}",
        f"paths.data_dir={data_dir}",
        "+trainer.fast_dev_run=true",
        "logger=none",
        *FOR_TINY_FILES.get(experiment, []),
    ]
    if experiment.startswith("nb_resnet18_transfer"):  # ImageNet weights from a local file
        overrides.append(f"model.weights_path={data_dir / 'resnet18.pth'}")
    metrics = train_in_process(overrides, tmp_path)
    assert metrics["status"] == "completed", metrics
    assert metrics["global_step"] == 1
    assert 0.0 <= metrics["test/acc"] <= 1.0
