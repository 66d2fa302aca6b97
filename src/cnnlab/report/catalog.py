"""The experiments of the sources, grouped as the results page shows them.

One list, read by the results page (``python -m cnnlab.report --paper``) and by the reproduction
driver (``python -m cnnlab.reproduce``). Each experiment's hyperparameters, seed and published
figure live in its ``conf/experiment/<name>.yaml``; here only what the page needs to lay it out,
and where the driver finds each experiment's data under its data folder (:func:`plan`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cnnlab.rundir import write_json_atomic


@dataclass(frozen=True)
class Entry:
    """One experiment: its config name, the kind of net (for the MLP-vs-CNN figure), its data."""

    name: str
    kind: str  # "mlp" or "cnn"
    data: tuple[str, ...]  # keys of DATA_NEEDS


@dataclass(frozen=True)
class Section:
    """One source: a table, its learning curves and its hand-written notes on the page."""

    key: str
    title: str
    setup: str
    entries: tuple[Entry, ...]


# What each data key stands for (the reproduction driver checks the files).
DATA_NEEDS = {
    "cifar10": "CIFAR-10: cifar-10-batches-py/ or cifar10-jpeg/",
    "cifar2": "CIFAR-10: cifar-10-batches-py/ or cifar10-jpeg/",
    "mnist": "MNIST: MNIST/raw/ or mnist/MNIST/raw/",
    "celeba": "CelebA: celeba/",
    "petimages": "Cats vs dogs: PetImages/",
    "resnet18_weights": "the ResNet-18 ImageNet weights file resnet18-f37072fd.pth in torch "
    "hub's cache",
}
CIFAR10, CIFAR2 = ("cifar10",), ("cifar2",)
SECTIONS: tuple[Section, ...] = (
    Section(
        "gdl",
        "GDL ch. 2: CIFAR-10, MLP vs CNN",
        "50,000 training images, accuracy on the 10,000 test images (`val` = the test split, as "
        "the texts evaluate); pixels in [0, 1]; Adam; batch 32; 10 epochs.",
        (
            Entry("gdl_mlp", "mlp", CIFAR10),
            Entry("gdl_mlp_small", "mlp", CIFAR10),
            Entry("gdl_convnet", "cnn", CIFAR10),
            Entry("gdl_cnn", "cnn", CIFAR10),
        ),
    ),
    Section(
        "dlwpt",
        "DLWPT ch. 7-8: CIFAR-2 (airplane vs bird)",
        "10,000 training images, the 2,000 CIFAR-2 test images as validation; SGD lr 1e-2 without "
        "momentum; batch 64; 100 epochs; seed 123.",
        (
            Entry("dlwpt_fc", "mlp", CIFAR2),
            Entry("dlwpt_net", "cnn", CIFAR2),
            Entry("dlwpt_width", "cnn", CIFAR2),
            Entry("dlwpt_l2", "cnn", CIFAR2),
            Entry("dlwpt_dropout", "cnn", CIFAR2),
            Entry("dlwpt_batchnorm", "cnn", CIFAR2),
            Entry("dlwpt_depth", "cnn", CIFAR2),
            Entry("dlwpt_res", "cnn", CIFAR2),
            Entry("dlwpt_res_deep", "cnn", CIFAR2),
        ),
    ),
    Section(
        "mlpt",
        "MLPT ch. 14: MNIST and CelebA smile",
        "MNIST: 50,000 train / first 10,000 train images as val / 10,000 test; Adam 1e-3; 20 "
        "epochs. CelebA: the `Smiling` attribute, Adam 1e-3, the source's 15,000 steps of 32 "
        "(30 epochs of 16,000 faces; 60 of the subset's 8,000).",
        (
            Entry("mlpt_mnist_cnn", "cnn", ("mnist",)),
            Entry("mlpt_smile_cnn", "cnn", ("celeba",)),
        ),
    ),
    Section(
        "nb",
        "NB: MNIST, cats vs dogs, transfer learning",
        "MNIST: a random 90/10 split, SGD lr 0.06, batch 512, 10 epochs. Cats vs dogs: the "
        "source's split (train 468 / valid 4,214 / test the rest); `_full` variants train on "
        "most of the data (beyond the source, no published number).",
        (
            Entry("nb_mnist_cnn", "cnn", ("mnist",)),
            Entry("nb_mnist_mlp", "mlp", ("mnist",)),
            Entry("nb_cats_dogs_cnn", "cnn", ("petimages",)),
            Entry("nb_cats_dogs_cnn_full", "cnn", ("petimages",)),
            Entry("nb_resnet18_transfer", "cnn", ("petimages", "resnet18_weights")),
            Entry("nb_resnet18_transfer_full", "cnn", ("petimages", "resnet18_weights")),
        ),
    ),
    Section(
        "fast",
        "Fast CIFAR-10 (airbench94-style `cifar10_fast`)",
        "All 50,000 training images, batch 1024, 10 epochs; test accuracy with mirror-and-"
        "translate TTA. The published figure is airbench94's on the official files.",
        (Entry("cifar10_fast", "cnn", CIFAR10),),
    ),
)
# The DLWPT ch. 8 study drawn as the book draws it (train/val bars per net).
CIFAR2_STUDY = tuple(e.name for e in SECTIONS[1].entries if e.name != "dlwpt_res_deep")
# Nets compared by accuracy against parameter count, per dataset.
PARAMS_FIGURE = {
    "CIFAR-10 (GDL)": ("gdl_mlp", "gdl_mlp_small", "gdl_convnet", "gdl_cnn"),
    "CIFAR-2 (DLWPT)": CIFAR2_STUDY,
    "MNIST (MLPT, NB)": ("nb_mnist_mlp", "nb_mnist_cnn", "mlpt_mnist_cnn"),
}


def entries() -> list[Entry]:
    """Every experiment of every section, in page order."""
    return [e for s in SECTIONS for e in s.entries]


def entry(name: str) -> Entry | None:
    return next((e for e in entries() if e.name == name), None)


def has_experiment(name: str) -> bool:
    """Whether ``conf/experiment/<name>.yaml`` exists."""
    from cnnlab.config import CONFIG_DIR

    return (CONFIG_DIR / "experiment" / f"{name}.yaml").is_file()


@cache
def experiment_config(name: str) -> dict[str, Any] | None:
    """What the page needs of ``experiment=<name>``'s composed config, or None if conf lacks it.

    Composing costs ~0.15 s an experiment and the page needs all of them, so the answers are
    kept in the cache directory (``paths.cache_dir``'s default: ``$CNNLAB_CACHE``, else
    ``<$CNNLAB_OUTPUTS or outputs>/cache``), under a digest of every config file and of the code
    that derives them: any edit composes again. Plain JSON, never unpickled.
    """
    if not has_experiment(name):
        return None
    path = _cache_path()
    kept = _read_json(path)
    if name not in kept:
        kept = {**_read_json(path), name: _compose(name)}  # another process may have added
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, kept)
    answer = dict(kept[name])
    answer["classes"] = tuple(answer["classes"]) if answer["classes"] else None  # JSON: a list
    return answer


def _compose(name: str) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from cnnlab.config import CONFIG_DIR, register_resolvers
    from cnnlab.report.runs import class_subset

    register_resolvers()  # the data presets' generated defaults
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    return {
        "seed": int(cfg.seed),
        "expected": OmegaConf.to_container(cfg.expected) if cfg.get("expected") else None,
        "data": choices.get("data"),
        "classes": class_subset(cfg),
        "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs"),
    }


def published_variant(name: str) -> list[str]:
    """The overrides of the run ``make reproduce`` adds where the published figure was measured
    another way (``expected.as_published``, e.g. without ``model.eval()``); [] for none."""
    expected = (experiment_config(name) or {}).get("expected") or {}
    if expected.get("value") is None:  # nothing published to compare that run with
        return []
    return list(expected.get("as_published") or ())


@cache
def _cache_path() -> Path:
    from omegaconf import OmegaConf

    from cnnlab import report
    from cnnlab.config import CONFIG_DIR

    digest = hashlib.sha256()
    code = Path(report.__file__).parent
    sources = [*sorted(CONFIG_DIR.rglob("*.yaml")), code / "catalog.py", code / "runs.py"]
    for source in sources:
        digest.update(str(source.relative_to(source.parents[1])).encode() + b"\0")
        digest.update(source.read_bytes())
    # paths.cache_dir as conf/paths/default.yaml defines it, without composing a whole config
    paths = OmegaConf.create({"paths": OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml")})
    return Path(paths.paths.cache_dir) / f"experiments-{digest.hexdigest()[:20]}.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


# The two classes of CIFAR-2, picked out of a CIFAR-10 copy that holds all ten
CIFAR2_CLASSES = ["data.classes=[airplane,bird]", "data.class_names=[airplane,bird]"]
RESNET18_WEIGHTS = "resnet18-f37072fd.pth"


def data_overrides(need: str, data: Path) -> list[str] | None:
    """The overrides that point a run at the dataset ``need`` under ``data`` (None: missing)."""
    if need in ("cifar10", "cifar2"):
        if (data / "cifar-10-batches-py").is_dir():
            return [f"paths.data_dir={data}"]
        if (data / "cifar10-jpeg").is_dir():
            subset = CIFAR2_CLASSES if need == "cifar2" else []
            return ["data=cifar10_jpeg", f"paths.data_dir={data}", *subset]
        return None
    if need == "mnist":
        for root in (data / "mnist", data):
            if (root / "MNIST" / "raw").is_dir():
                return [f"paths.data_dir={root}"]
        return None
    if need in ("celeba", "petimages"):
        folder = {"celeba": "celeba", "petimages": "PetImages"}[need]
        return [f"paths.data_dir={data}"] if (data / folder).is_dir() else None
    if need == "resnet18_weights":
        import torch.hub

        weights = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_WEIGHTS
        return [] if weights.is_file() else None
    raise ValueError(f"unknown data need {need!r}")


def plan(experiment: str, needs: tuple[str, ...], data: Path) -> tuple[list[str], str | None]:
    """The data overrides of ``experiment``, or why it cannot run here."""
    if not has_experiment(experiment):
        return [], f"no conf/experiment/{experiment}.yaml in this checkout"
    overrides: list[str] = []
    for need in needs:
        found = data_overrides(need, data)
        if found is None:
            where = "" if need == "resnet18_weights" else f" (looked under {data})"
            return [], f"missing {DATA_NEEDS[need]}{where}"
        overrides += [o for o in found if o not in overrides]
    return overrides, None
