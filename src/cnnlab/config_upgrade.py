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
# Data modules of the versions before one ClassificationDataModule: (source, storage) each.
DATA_MODULES = {
    "cnnlab.data.mnist.MNISTDataModule": ("cnnlab.data.mnist.MNISTSource", "memory"),
    "cnnlab.data.cifar.CIFAR10DataModule": ("cnnlab.data.cifar.CIFAR10Source", "memory"),
    "cnnlab.data.digits.DigitsDataModule": ("cnnlab.data.digits.DigitsSource", "memory"),
    "cnnlab.data.synthetic.SyntheticDataModule": (
        "cnnlab.data.synthetic.SyntheticSource",
        "memory",
    ),
    "cnnlab.data.image_folder.InMemoryImageFolder": (
        "cnnlab.data.image_folder.ImageFolderSource",
        "memory",
    ),
    "cnnlab.data.image_folder.FileImageFolder": (
        "cnnlab.data.image_folder.ImageFolderSource",
        "files",
    ),
    "cnnlab.data.celeba.CelebAAttributeDataModule": ("cnnlab.data.celeba.CelebASource", "files"),
}
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
    if data.get("_target_") in DATA_MODULES:
        data["source"], data["storage"] = DATA_MODULES[data["_target_"]]
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
