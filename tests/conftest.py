"""Shared helpers: compose the real configs and run training in-process on small data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab.config import CONFIG_DIR, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
register_resolvers()

# Small and quick: every test run is on CPU, with no progress bar.
FAST = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "torch_threads=1",
]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed train config, with Hydra's runtime set as a real run would have it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_in_process(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """Run ``cnnlab.train.train`` on the composed config; return its metrics."""
    from cnnlab.train import train

    cfg = compose_train(overrides, output_dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg)


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> Any:
    """``python -m <module> args`` in a subprocess, as a user would type it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
