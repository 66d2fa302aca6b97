"""CelebA in every layout users have, and splits by counts, on generated files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.errors import ConfigError, DataError
from datafiles import use_md5s_for_celeba, write_celeba, write_image_folder

from conftest import compose_config, datamodule


def smile(root: Path, *overrides: str):
    """The mlpt_smile_cnn data (MLPT's crops and subsets), on ``root``, without workers."""
    dm = datamodule(
        "experiment=mlpt_smile_cnn",
        f"paths.data_dir={root}",
        "paths.cache_dir=null",
        "data.download=false",
        "data.num_workers=0",
        "data.train_subset=6",
        "data.val_subset=3",
        *overrides,
    )
    dm.setup("fit")
    return dm


def test_official_layout_uses_the_partitions_and_checks_md5s(tmp_path, monkeypatch) -> None:
    info = write_celeba(tmp_path, (8, 4, 4))
    use_md5s_for_celeba(monkeypatch, info["md5"])
    dm = smile(tmp_path)
    assert dm.describe()["sizes"] == {"train": 6, "val": 3, "test": 4}
    assert dm.splits["test"].labels.tolist() == info["smiling"][2]
    assert "official layout" in dm.describe()["copy"]
    attr = tmp_path / "celeba" / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace(" 1", "-1", 1))
    with pytest.raises(DataError, match=r"MD5 differs.*list_attr_celeba\.txt"):
        smile(tmp_path)


@pytest.mark.parametrize("zero_one", [False, True])
def test_partial_copy_without_val_test_is_split_by_fractions(tmp_path, zero_one) -> None:
    info = write_celeba(tmp_path, (20, 0, 0), layout="partial", zero_one=zero_one)
    dm = smile(tmp_path)
    facts = dm.describe()
    assert facts["sizes"] == {"train": 16, "val": 2, "test": 2}  # data.split 0.8 / 0.1 / 0.1
    assert "leaves val or test empty" in facts["partition"] and "partial layout" in facts["copy"]
    labels = torch.cat([dm.splits[s].labels for s in ("train", "val", "test")]).sort().values
    assert labels.tolist() == sorted(info["smiling"][0])
    again = smile(tmp_path)
    assert again.splits["val"].paths == dm.splits["val"].paths  # seeded
    other = smile(tmp_path, "data.split_seed=1")
    assert other.splits["val"].paths != dm.splits["val"].paths


def test_csv_layout_and_a_missing_partition_file(tmp_path) -> None:
    info = write_celeba(tmp_path / "a", (8, 4, 4), layout="csv", zero_one=True)
    dm = smile(tmp_path / "a")
    assert dm.describe()["sizes"] == {"train": 6, "val": 3, "test": 4}
    assert dm.splits["train"].labels.tolist() == info["smiling"][0][:6]
    assert "CSV layout" in dm.describe()["copy"]
    write_celeba(tmp_path / "b", None, layout="csv")
    dm = smile(tmp_path / "b", "data.split={train:10,val:3,test:rest}")
    assert dm.describe()["sizes"] == {"train": 10, "val": 3, "test": 3}
    assert "no partition file" in dm.describe()["partition"]


def test_half_size_images_get_crops_scaled_by_one_half(tmp_path) -> None:
    write_celeba(tmp_path, (8, 4, 4), layout="partial", scale=0.5)
    dm = smile(tmp_path)
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.uint8
    crop = dm.storage.eval_transform.transforms[0]
    from PIL import Image

    with Image.open(dm.splits["test"].paths[0]) as face:
        assert face.size == (89, 109) and crop.scaled_size(face) == [89, 89]


def test_unusable_files_get_one_message_naming_them(tmp_path) -> None:
    write_celeba(tmp_path, (8, 4, 4), layout="partial")
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) listed in .*list_attr_celeba\.txt.*000003"):
        smile(tmp_path)
    write_celeba(tmp_path, (8, 4, 4), layout="partial")
    attr = folder / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace(" 1", " 7", 1))
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt:3: .*-1/1 or 0/1"):
        smile(tmp_path)
    write_celeba(tmp_path, (8, 4, 4), layout="partial")
    (folder / "list_eval_partition.txt").write_text("000001.jpg 5\n")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:1"):
        smile(tmp_path)
    with pytest.raises(ConfigError, match=r"Smiles.*Heavy_Makeup"):
        write_celeba(tmp_path, (8, 4, 4), layout="partial")
        smile(tmp_path, "data.attribute=Smiles")


# ---- split by counts --------------------------------------------------------------------------
def test_split_by_counts_takes_the_rest_for_test(tmp_path) -> None:
    write_image_folder(tmp_path / "PetImages", classes=("Cat", "Dog"), per_class=15)
    args = ("data=cats_vs_dogs", f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}")
    dm = datamodule(*args, "data.decode_workers=1", "data.split={train:5,val:10,test:rest}")
    dm.setup("fit")
    sizes = dm.describe()["sizes"]
    assert sizes == {"train": 5, "val": 10, "test": 15}
    every = dm.splits["train"].paths + dm.splits["val"].paths + dm.splits["test"].paths
    assert len(set(every)) == 30  # a partition of the folder
    with pytest.raises(ConfigError, match=r"asks for .* of the 30 images"):
        datamodule(*args, "data.split={train:25,val:10,test:rest}").setup("fit")
    with pytest.raises(ConfigError, match=r"data\.val_split=official"):
        datamodule(*args, "data.val_split=0.1").setup("fit")


def test_nb_experiments_use_the_source_counts_and_the_full_variants_most_data() -> None:
    for name in ("nb_cats_dogs_cnn", "nb_resnet18_transfer"):
        cfg = compose_config(f"experiment={name}")
        assert dict(cfg.data.split) == {"train": 468, "val": 4214, "test": "rest"}
        full = compose_config(f"experiment={name}_full")
        assert dict(full.data.split) == {"train": 0.8, "val": 0.1, "test": 0.1}
        assert full.expected.value is None
