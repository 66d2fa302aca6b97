"""Every experiment of conf/experiment/ runs one fast_dev_run step on its own real data loader.

The datasets are files this module writes in each source's exact on-disk format (CIFAR-10
pickles, MNIST idx, the CelebA folder and attribute files, the PetImages folders), so each
experiment goes through the loader, the transforms, the model and the optimizer it names.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from cnnlab.build import build_model
from cnnlab.models.common import count_parameters
from cnnlab.summary import summarize
from datafiles import (
    use_md5s_for_celeba,
    use_md5s_for_cifar,
    write_celeba,
    write_cifar10,
    write_image_folder,
    write_mnist,
)

from conftest import (
    compose_config,
    model_expectation,
    presets,
    readme_block,
    train_in_process,
)

# What the tiny generated files need beyond the experiment's own settings.
FOR_TINY_FILES = {
    # the generated CelebA has 8/4/4 images, the text trains on the first 16,000 of 162,770
    "mlpt_smile_cnn": ["data.train_subset=8", "data.val_subset=4"],
    # 12 generated pets; the source's protocol trains on 468 and validates on 4,214
    "nb_cats_dogs_cnn": ["data.split={train:6,val:3,test:rest}"],
    "nb_resnet18_transfer": ["data.split={train:6,val:3,test:rest}"],
}


def _image_folder_for_new_datasets(data: Any, data_dir: Path) -> None:
    """A dataset preset added over an image folder under ``paths.data_dir`` (README,
    "Extending cnnlab") gets a small folder of its classes, so its experiments run here too."""
    root = OmegaConf.select(data, "root", default=None)
    if root is None or Path(root).exists() or data_dir not in Path(root).parents:
        return
    classes = tuple(OmegaConf.select(data, "class_names", default=None) or ("a", "b"))
    write_image_folder(Path(root), classes=classes, per_class=6, size=(40, 30))


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("data")
    # Enough images for MLPT's validation set of the first 10,000 MNIST training images.
    cifar = write_cifar10(root, per_batch=20, test=20)
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


@pytest.mark.parametrize("experiment", presets("experiment"))
def test_every_experiment_runs_a_fast_dev_run_step(
    experiment: str, data_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        f"experiment={experiment}",
        f"paths.data_dir={data_dir}",
        "+trainer.fast_dev_run=true",
        "logger=none",
        "data.batch_size=4",  # one step of the experiment's code; its own batch costs seconds
        *FOR_TINY_FILES.get(experiment, []),
    ]
    if experiment.startswith("nb_resnet18_transfer"):  # ImageNet weights from a local file
        overrides.append(f"model.weights_path={data_dir / 'resnet18.pth'}")
    _image_folder_for_new_datasets(compose_config(*overrides).data, data_dir)
    metrics = train_in_process(overrides, tmp_path)
    assert metrics["status"] == "completed", metrics
    assert metrics["global_step"] == 1
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_readme_extending_walkthroughs_add_a_model_and_an_experiment(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's two-file model and one-file experiment, as a user would add them."""
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "model" / "tiny_vgg.yaml").write_text(readme_block("conf/model/tiny_vgg.yaml`", "yaml"))
    experiment = readme_block("`conf/experiment/gdl_cnn_seeds.yaml`:", "yaml")
    (conf / "experiment" / "gdl_cnn_seeds.yaml").write_text(experiment)
    module = types.ModuleType("cnnlab.models.tiny_vgg")
    exec(readme_block("`src/cnnlab/models/tiny_vgg.py`:", "python"), module.__dict__)
    monkeypatch.setitem(sys.modules, "cnnlab.models.tiny_vgg", module)
    search = f"hydra.searchpath=[file://{conf}]"

    expect = model_expectation("tiny_vgg", conf)
    cfg = compose_config(search, "model=tiny_vgg", *expect["data"])
    assert count_parameters(build_model(cfg)) == expect["params"]
    assert summarize([search, "model=tiny_vgg", "data=cifar10"]) == expect["params"] == 17_658
    width = compose_config(search, "model=tiny_vgg", "model.width=8", *expect["data"])
    assert build_model(width).features[0].out_channels == 8
    common = [search, "+trainer.fast_dev_run=true", "logger=none"]
    metrics = train_in_process([*common, "model=tiny_vgg", "model.width=8"], tmp_path / "m")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1

    cfg = compose_config(search, "experiment=gdl_cnn_seeds", output_dir=tmp_path / "c")
    assert cfg.hydra.sweeper.params.seed == "0,1,2"
    assert cfg.model._target_.endswith("StridedConvNet") and cfg.optimizer.lr == 0.0005
    run = [*common, "experiment=gdl_cnn_seeds", f"paths.data_dir={data_dir}", "seed=1"]
    metrics = train_in_process(run, tmp_path / "e")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
