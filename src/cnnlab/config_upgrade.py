"""Run configs saved by earlier cnnlab versions, in today's keys, with the same behaviour.

Read wherever a stored config meets today's code: a checkpoint's config (``cnnlab.eval``,
``load_model``) and a run directory's ``.hydra/config.yaml`` (``resume=true``, whose check would
otherwise call every key added since a change of the run).
"""

from __future__ import annotations

from typing import Any

# Model classes that moved: configs of earlier versions name them.
RENAMED_TARGETS = {
    "cnnlab.models.strided.StridedConvNet": "cnnlab.models.strided_dense.StridedConvNet",
    "cnnlab.models.stride2.Stride2ConvNet": "cnnlab.models.all_conv.AllConvNet",
}
# Data modules of the versions before one ClassificationDataModule: the keys that say the same
# now (source, storage; CIFAR-10 read only the pickles then).
DATA_MODULES: dict[str, dict[str, str]] = {
    "cnnlab.data.mnist.MNISTDataModule": {"source": "cnnlab.data.mnist.MNISTSource"},
    "cnnlab.data.cifar.CIFAR10DataModule": {
        "source": "cnnlab.data.cifar.CIFAR10Source",
        "copy": "pickles",
    },
    "cnnlab.data.digits.DigitsDataModule": {"source": "cnnlab.data.digits.DigitsSource"},
    "cnnlab.data.synthetic.SyntheticDataModule": {
        "source": "cnnlab.data.synthetic.SyntheticSource"
    },
    "cnnlab.data.image_folder.InMemoryImageFolder": {
        "source": "cnnlab.data.image_folder.ImageFolderSource"
    },
    "cnnlab.data.image_folder.FileImageFolder": {
        "source": "cnnlab.data.image_folder.ImageFolderSource",
        "storage": "files",
    },
    "cnnlab.data.celeba.CelebAAttributeDataModule": {
        "source": "cnnlab.data.celeba.CelebASource",
        "storage": "files",
    },
}
# data=image_folder's target then, which chose one of the two classes by ``in_memory``.
IMAGE_FOLDER_FACTORY = "cnnlab.data.image_folder.image_folder_datamodule"
# Keys added since, with the value that does what configs without them did, per group and the
# class they belong to.
ADDED_KEYS = {
    "module": (
        "cnnlab.module.ClassifierModule",
        {
            "eval_translate_tta": 0,
            "tta_in_validation": True,
            "eval_norm": "running",
            "eval_dropout": False,
        },
    ),
    "trainer": ("lightning.pytorch.Trainer", {"max_steps": -1}),
}


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a plain dict, changed in place and returned) in today's keys."""
    model = config.get("model") or {}
    if "_target_" in model:
        model["_target_"] = RENAMED_TARGETS.get(model["_target_"], model["_target_"])
    module = config.get("module") or {}
    if "decay_norm_and_bias" in module:  # false: exempt; true: the optimizer's weight decay
        decay = None if module.pop("decay_norm_and_bias") else 0.0
        module.setdefault("norm_weight_decay", decay)
        module.setdefault("bias_weight_decay", decay)
    data = config.get("data") or {}
    if data.get("_target_") == IMAGE_FOLDER_FACTORY:
        kind = "InMemoryImageFolder" if data.pop("in_memory", True) else "FileImageFolder"
        data["_target_"] = f"cnnlab.data.image_folder.{kind}"
    if data.get("_target_") in DATA_MODULES:
        data.update({"storage": "memory", **DATA_MODULES[data["_target_"]]})
        data["_target_"] = "cnnlab.data.datamodule.ClassificationDataModule"
        transforms = {k: data.pop(f"{k}_transforms", None) for k in ("train", "eval")}
        data.setdefault("transforms", transforms)
    scheduler = config.get("scheduler") or {}
    if "scheduler" in scheduler:  # was {scheduler: {_target_: ...}, interval: ...}
        inner = scheduler.pop("scheduler") or {}
        config["scheduler"] = {**inner, **scheduler} if inner else {}
    for group, (target, added) in ADDED_KEYS.items():
        node = config.get(group)
        if isinstance(node, dict) and node.get("_target_") == target:  # not a user's own class
            for key, value in added.items():
                node.setdefault(key, value)
    return config
