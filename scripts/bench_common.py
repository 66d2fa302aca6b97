"""Shared parts of the benchmark scripts: composing configs, machine description, medians.

``bench_throughput.py`` answers "how fast does cnnlab train, against the texts' raw loop";
``bench_startup.py`` answers "how long until the first step, and what does a sweep cost".
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

from cnnlab.cluster import allocated_cpus

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str], output_dir: Path) -> Any:
    """The composed train config with Hydra's runtime set as a real run has it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from cnnlab.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def clock_callback(out: Path, skip: int = 1) -> list[str]:
    """Overrides adding cnnlab's StepClock callback, which writes its times to ``out``."""
    return [
        "+callbacks.clock._target_=cnnlab.callbacks.StepClock",
        f"+callbacks.clock.out={out}",
        f"+callbacks.clock.skip={skip}",
    ]


def device_of(setting: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine(device: str) -> dict[str, Any]:
    """CPU, cores, threads, library versions and the training device."""
    import lightning
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = allocated_cpus()
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    return {
        "cpu": cpu,
        "cores": cores,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "device": device,
    }


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table: the first column left-aligned, the others right."""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return [line(header), "|---|" + "---:|" * (len(header) - 1), *map(line, rows)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def speeds(runs: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in runs]


def paired(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
    """Median over rounds of a/b: each pair ran back to back under the same load."""
    return median([x[key] / y[key] for x, y in zip(a, b, strict=True)])


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def plain_step(model: Any, optimizer: Any, x: Any, y: Any) -> float:
    """One step as the texts write it: zero_grad, cross-entropy, backward, step, ``.item()``."""
    import torch.nn.functional as F

    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()
