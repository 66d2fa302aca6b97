"""cnnlab: Hydra-configured image-classification experiments on PyTorch Lightning.

``cnnlab.load_model(path)`` returns the trained network of a checkpoint (eval mode) and
``cnnlab.load_module(path)`` its :class:`~cnnlab.module.ClassifierModule`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model", "load_module"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import cnnlab.train` should not pay for torch before it needs it.
    if name in __all__:
        from cnnlab import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
