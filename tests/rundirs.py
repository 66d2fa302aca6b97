"""Hand-written run directories in the exact layout cnnlab.train leaves (for the report tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cnnlab.report.catalog import experiment_config


def write_run(
    root: Path,
    experiment: str,
    seed: int,
    metrics: dict[str, Any] | None,
    *,
    overrides: tuple[str, ...] = (),
    data: str | None = None,
    classes: list[str] | None = None,
    val_curve: list[float] = (),
    debug: str | None = None,
    name: str | None = None,
) -> Path:
    """``root/<experiment>/seed_<seed>`` with .hydra/, metrics.json and TensorBoard scalars."""
    reference = experiment_config(experiment) or {
        "expected": None,
        "data": "digits",
        "classes": None,
        "max_epochs": 3,
    }
    run = root / experiment / (name or f"seed_{seed}")
    (run / ".hydra").mkdir(parents=True)
    classes = classes if classes is not None else reference["classes"]
    config = {
        "seed": seed,
        "expected": reference["expected"],
        "data": {"classes": list(classes) if classes else None},
        "trainer": {"max_epochs": reference["max_epochs"], "fast_dev_run": debug is not None},
    }
    task = [f"experiment={experiment}", f"seed={seed}", "torch_threads=1", *overrides]
    choices = {"experiment": experiment, "data": data or reference["data"], "debug": debug}
    hydra = {
        "hydra": {
            "runtime": {"choices": choices},
            "overrides": {"task": task, "hydra": [f"hydra.run.dir=out/{experiment}/seed_{seed}"]},
        }
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(task))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if val_curve:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run))
        for epoch, value in enumerate(val_curve):
            writer.add_scalar("val/acc", value, global_step=10 * (epoch + 1) - 1)
            writer.add_scalar("train/acc", min(1.0, value + 0.05), global_step=10 * (epoch + 1) - 1)
        writer.close()
    return run


def completed(val: float, test: float | None = None, **extra: Any) -> dict[str, Any]:
    """A completed run's metrics.json (best epoch 0-based, as Lightning counts)."""
    return {
        "status": "completed",
        "train/acc": val + 0.05,
        "val/acc": val,
        "val/acc_best": val + 0.01,
        "test/acc": test if test is not None else val,
        "best_epoch": 4,
        "params": 18090,
        "wall_time_s": 300.0,
        **extra,
    }
