"""The data config's defaults, generated from the Python signatures (their one source).

For each source, a config node ``data_defaults/<module>`` holds every setting of
:class:`ClassificationDataModule` and of the source that has a default, plus the default
presets of the ``data/normalize``, ``data/augment`` and ``data/transforms`` groups. A data
preset starts from it (``defaults: [/data_defaults/cifar@_here_, _self_]``) and states only what
differs, while ``data.<key>=value`` still works on the command line for every key.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from cnnlab.data.datamodule import SHARED, ClassificationDataModule
from cnnlab.data.source import Source, parameters

GROUP = "data_defaults"
SOURCE_MODULES = ("cifar", "mnist", "celeba", "image_folder", "digits", "synthetic")
GROUP_DEFAULTS = {"normalize": "unit", "augment": "none", "transforms": "none"}
# Filled by the groups above rather than by a Python value.
_FROM_GROUPS = set(GROUP_DEFAULTS)


def defaults_of(cls: type) -> dict[str, Any]:
    """``{parameter: default}`` of the constructor parameters of ``cls`` that have one."""
    return {
        name: p.default
        for name, p in parameters(cls).items()
        if p.default is not inspect.Parameter.empty and name not in SHARED
    }


def node_for(source: type[Source]) -> dict[str, Any]:
    module = {
        k: v for k, v in defaults_of(ClassificationDataModule).items() if k not in _FROM_GROUPS
    }
    return {
        "defaults": [{f"/data/{g}@{g}": preset} for g, preset in GROUP_DEFAULTS.items()],
        "_target_": f"{ClassificationDataModule.__module__}.ClassificationDataModule",
        "source": f"{source.__module__}.{source.__qualname__}",
        **module,
        **defaults_of(source),
    }


def register() -> None:
    """Store one node per source module in Hydra's ConfigStore (before composing)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in SOURCE_MODULES:
        module = importlib.import_module(f"cnnlab.data.{name}")
        (source,) = [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, Source) and v.__module__ == module.__name__
        ]
        store.store(group=GROUP, name=name, node=node_for(source))
