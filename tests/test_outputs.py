"""One key, paths.log_dir, moves everything a run writes; paths.output_dir cannot split a run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from forkrun import run_module

from conftest import ROOT, compose_config

TINY = [
    "+trainer.fast_dev_run=true",
    "trainer.accelerator=cpu",
    "torch_threads=1",
    "print_config=false",
]


def _train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CNNLAB_OUTPUTS", "CNNLAB_CACHE")}
    return run_module(
        "cnnlab.train",
        [*args, *TINY],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT / "src")},
        timeout=600,
    )


def test_log_dir_moves_runs_sweeps_and_the_cache(tmp_path: Path) -> None:
    elsewhere = tmp_path / "scratch" / "cnnlab"
    single = _train(tmp_path, f"paths.log_dir={elsewhere}")
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = _train(tmp_path, "-m", f"paths.log_dir={elsewhere}", "seed=1,2")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (run,) = (elsewhere / "runs").glob("*/*")
    jobs = sorted((elsewhere / "multiruns").glob("*/*/[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    for run_dir in [run, *jobs]:  # Hydra's files and cnnlab's in the same directory
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert (run_dir / "metrics.json").is_file() and (run_dir / "train.log").is_file()
    assert not (tmp_path / "outputs").exists()

    cfg = compose_config(f"paths.log_dir={elsewhere}", output_dir=tmp_path / "run")
    assert cfg.paths.cache_dir == f"{elsewhere}/cache"
    assert cfg.hydra.run.dir.startswith(f"{elsewhere}/runs/")
    assert cfg.hydra.sweep.dir.startswith(f"{elsewhere}/multiruns/")


def test_setting_paths_output_dir_is_refused_naming_the_keys_that_move_output(
    tmp_path: Path,
) -> None:
    target = tmp_path / "X"
    result = _train(tmp_path, f"paths.output_dir={target}")
    assert result.returncode == 2
    assert "paths.log_dir" in result.stderr and "hydra.run.dir" in result.stderr
    assert not target.exists()
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*")
    assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()
