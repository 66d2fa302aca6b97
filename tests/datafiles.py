"""Writers of tiny datasets in the exact on-disk formats the real loaders read.

Each writer returns what a test needs to know about the files (e.g. their MD5s, so that tests
can point torchvision's integrity tables at the generated files instead of the published ones).
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10, CelebA

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
# The 40 columns of list_attr_celeba.txt, in the published order ("Smiling" is index 31).
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---- CIFAR-10 -------------------------------------------------------------------------------
def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` as pickles.

    Same layout as the published files: dicts with ``data`` (uint8 rows of 3072 = R, G, B
    planes of 32x32), ``labels``, ``batch_label``, ``filenames``; every class appears in every
    batch. Returns ``{"md5": {file: md5}, "train": (images NHWC, labels), "test": ...}``.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict = {"md5": {}}

    def batch(name: str, n: int) -> tuple[np.ndarray, list[int]]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        entry = {
            "batch_label": f"{name} of 5",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{name}_{i}.png" for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f, protocol=2)
        return data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), labels

    train = [batch(f"data_batch_{i}", per_batch) for i in range(1, 6)]
    out["train"] = (np.concatenate([t[0] for t in train]), [y for t in train for y in t[1]])
    out["test"] = batch("test_batch", test)
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    for path in folder.iterdir():
        out["md5"][path.name] = md5(path)
    return out


# ---- MNIST ------------------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, train: int = 60, test: int = 20, gz: bool = False, seed: int = 0
) -> dict:
    """``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (big-endian idx)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            data = _idx(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


# ---- CelebA -------------------------------------------------------------------------------
def write_celeba(
    root: Path,
    partitions: tuple[int, int, int] | None = (8, 4, 4),
    seed: int = 0,
    *,
    layout: str = "official",
    scale: float = 1.0,
    zero_one: bool = False,
) -> dict:
    """CelebA in ``root/celeba``: aligned JPEGs (178x218 times ``scale``) and annotation files.

    ``layout``: ``official`` (torchvision's five .txt files; attributes as +-1 after a count
    line and a header line), ``partial`` (only the attribute, partition and identity files, as
    the shared 10,000-face copy), ``csv`` (Kaggle's ``list_attr_celeba.csv`` and
    ``list_eval_partition.csv`` with ``image_id`` columns). ``partitions``: images per
    partition (train, valid, test), or None for no partition file; ``zero_one`` writes
    attributes as 0/1. Returns each annotation file's ``md5`` and the ``smiling`` labels (0/1)
    per partition (all of them in the first when ``partitions`` is None).
    """
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = partitions or (16, 0, 0)
    n = sum(counts)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    size = (round(178 * scale), round(218 * scale))
    for name in names:
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name, quality=90)
    attrs = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRIBUTES)))
    smile = CELEBA_ATTRIBUTES.index("Smiling")
    attrs[:, smile] = [1 if i % 3 == 0 else -1 for i in range(n)]
    # The column next to it differs, so a wrong column index would be caught.
    attrs[:, smile - 1] = -attrs[:, smile]
    values = (attrs + 1) // 2 if zero_one else attrs
    codes = [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    if layout == "csv":
        rows = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        rows += [
            f"{nm}," + ",".join(str(v) for v in row) for nm, row in zip(names, values, strict=True)
        ]
        (folder / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        if partitions is not None:
            (folder / "list_eval_partition.csv").write_text(
                "image_id,partition\n"
                + "".join(f"{nm},{c}\n" for nm, c in zip(names, codes, strict=True))
            )
    else:
        lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
        lines += [
            f"{nm} " + " ".join(f"{v:2d}" for v in row)
            for nm, row in zip(names, values, strict=True)
        ]
        (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        if partitions is not None:
            (folder / "list_eval_partition.txt").write_text(
                "".join(f"{nm} {c}\n" for nm, c in zip(names, codes, strict=True))
            )
        (folder / "identity_CelebA.txt").write_text(
            "".join(f"{nm} {i % 5 + 1}\n" for i, nm in enumerate(names))
        )
    if layout == "official":
        bbox = [str(n), "image_id x_1 y_1 width height"]
        bbox += [f"{nm} 95 71 226 313" for nm in names]
        (folder / "list_bbox_celeba.txt").write_text("\n".join(bbox) + "\n")
        marks = [
            str(n),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
            "leftmouth_y rightmouth_x rightmouth_y",
        ]
        marks += [f"{nm} 69 109 106 113 77 142 73 152 108 154" for nm in names]
        (folder / "list_landmarks_align_celeba.txt").write_text("\n".join(marks) + "\n")
    smiling = (attrs[:, smile] + 1) // 2
    bounds = np.cumsum((0, *counts))
    return {
        "md5": {p.name: md5(p) for p in folder.iterdir() if p.is_file()},
        "smiling": [smiling[bounds[i] : bounds[i + 1]].tolist() for i in range(3)],
        "names": names,
    }


# ---- image folders ---------------------------------------------------------------------------
def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_class: int = 12,
    size: tuple[int, int] = (20, 24),
    seed: int = 0,
    ext: str = ".jpg",
) -> list[Path]:
    """``root/<class>/<i>.jpg``: each class a distinct mean colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    written = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = np.array([60 + 120 * (c % 2), 60 + 60 * (c % 3), 200 - 120 * (c % 2)])
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            path = root / name / f"{i:04d}{ext}"
            Image.fromarray(pixels).save(path)
            written.append(path)
    return written


def write_corrupt_image(path: Path) -> Path:
    """A file with an image extension that no decoder can read (a truncated JPEG header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 7)
    return path


# torchvision refuses files whose MD5 differs from its table of the published files, and tiny
# generated files never match it. The tests point the tables at the generated files' MD5s
# (monkeypatched class attributes), so torchvision's own integrity check still runs on them:
# a file changed after writing fails it exactly as a corrupt download would.
def use_md5s_for_cifar(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5s[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5s[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})


def use_md5s_for_celeba(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    table = [(fid, md5s.get(name, m), name) for fid, m, name in CelebA.file_list]
    monkeypatch.setattr(CelebA, "file_list", table)
