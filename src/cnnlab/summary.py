"""Print an architecture's layers, output shapes and exact parameter count, without data.

``python -m cnnlab.summary model=dlwpt_net data=cifar2`` (or ``experiment=...``): shapes come
from the data config (``in_channels``, ``image_size``, ``num_classes``); nothing is loaded.
"""

from __future__ import annotations

import torch

from cnnlab.cli import run_cli
from cnnlab.config import compose_config


def summarize(overrides: list[str]) -> int:
    """Print the layer table and ``total_params: N``; return N (trainable parameters)."""
    import lightning as L
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from cnnlab.build import build_model
    from cnnlab.models.common import count_parameters

    class Architecture(L.LightningModule):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    cfg = compose_config("train", overrides)
    model = build_model(cfg)
    module = Architecture(model)
    size = cfg.data.image_size
    module.example_input_array = torch.zeros(2, cfg.data.in_channels, size, size)
    module.eval()
    print(ModelSummary(module, max_depth=-1))
    total = count_parameters(model)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(f"input: {tuple(module.example_input_array.shape[1:])}  data: {cfg.data.get('name')}")
    print(f"model: {cfg.model._target_}")
    print(f"frozen_params: {frozen}")
    print(f"total_params: {total}")
    return total


def main() -> None:
    run_cli(summarize)


if __name__ == "__main__":
    main()
