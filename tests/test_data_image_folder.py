"""``data=image_folder data.root=DIR`` alone: class names and image size come from the folder,
are recorded in the checkpoint, and eval uses the recorded ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnlab.errors import ConfigError
from datafiles import write_image_folder

from conftest import run_cli


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


def test_per_sample_presets_with_dataloader_workers_run_under_joblib(tmp_path: Path) -> None:
    from datafiles import write_celeba

    data, sweep = tmp_path / "data", tmp_path / "sweep"
    write_image_folder(data / "PetImages", classes=("Cat", "Dog"), per_class=10, size=(24, 24))
    write_celeba(data, (12, 0, 0), layout="partial", scale=0.25)
    result = run_cli(
        "cnnlab.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "data=cats_vs_dogs,celeba_smile",
        f"paths.data_dir={data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.image_size=16",
        "data.num_workers=1",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert sorted(r["data"]["name"] for r in runs) == ["cats_vs_dogs", "celeba_smile"]
