"""Train one configuration: ``python -m cnnlab.train [overrides]`` (``-m`` for a sweep)."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from cnnlab.cli import quiet_third_party
from cnnlab.config import (
    CONFIG_DIR,
    check_output_dir,
    register_resolvers,
    user_config_overrides,
    validate_config,
)
from cnnlab.console import announce_run
from cnnlab.data.image_folder import fill_from_folder
from cnnlab.errors import CnnlabError, ConfigError, RunExistsError
from cnnlab.launchers import jobs_were_launched
from cnnlab.rundir import (
    METRICS_FILE,
    ensure_writable,
    read_metrics,
    run_dir_lock,
    write_json_atomic,
)

log = logging.getLogger("cnnlab.train")

register_resolvers()


class _State:
    task_started = False


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, and write ``metrics.json`` into the run directory."""
    fill_from_folder(cfg.data)  # data=image_folder data.root=DIR alone: classes, size from DIR
    validate_config(cfg)  # first: bad input is refused before torch and Lightning load
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    quiet_third_party()
    check_output_dir(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ensure_writable(run_dir, cfg.paths.min_free_mb)
    if rank_zero_only.rank != 0:  # DDP ranks > 0 join the run that rank 0 holds
        return _fit_and_test(cfg, run_dir)
    announce_run(cfg, run_dir)
    with run_dir_lock(run_dir):
        return _fit_and_test(cfg, run_dir)


def _fit_and_test(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from cnnlab.build import build_datamodule, build_module, build_trainer
    from cnnlab.checkpoint import check_fits, read_checkpoint
    from cnnlab.models.common import count_parameters
    from cnnlab.rundir import ENVIRONMENT_FILE, environment

    previous = read_metrics(run_dir)
    ckpt_path = cfg.ckpt_path
    if cfg.resume:
        if previous and previous.get("status") == "completed":
            log.info("%s already completed (resume=true): skipping it.", run_dir)
            return previous
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
        log.info("Resuming from %s", ckpt_path or "scratch (no last.ckpt yet)")
    # DDP ranks > 0 re-run this script after rank 0 has marked the directory as running.
    elif previous is not None and ckpt_path != "last" and rank_zero_only.rank == 0:
        raise RunExistsError(
            f"{run_dir} already holds a run ({METRICS_FILE} exists); cnnlab never overwrites "
            "one. Add resume=true to continue it, or leave hydra.run.dir unset for a new one."
        )

    torch.set_num_threads(_thread_count(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    model = module.model
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if ckpt_path and ckpt_path != "last":
        check_fits(module, read_checkpoint(ckpt_path), ckpt_path)
    trainer = build_trainer(cfg)
    if rank_zero_only.rank == 0:
        write_json_atomic(run_dir / ENVIRONMENT_FILE, environment(Path.cwd()))
        write_json_atomic(run_dir / METRICS_FILE, {"status": "running"})

    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except MisconfigurationException as err:
        # e.g. a monitor key that is never logged: raised at the end of the first validation
        raise ConfigError(f"{err} (monitor={cfg.monitor!r})") from None
    fit_metrics = _scalars(trainer.callback_metrics)
    results: dict[str, Any] = {
        "status": "completed",
        **{k: fit_metrics.get(k) for k in ("train/loss", "train/acc", "val/loss", "val/acc")},
        "val/acc_best": module.best_val_acc,
        "best_epoch": module.best_epoch,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "params": count_parameters(model),
        "data": datamodule.describe() if hasattr(datamodule, "describe") else None,
    }
    if cfg.test_after_fit and not trainer.interrupted:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results["test_checkpoint"] = best or "final weights"
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        results.update(_scalars(trainer.callback_metrics, prefix="test/"))
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    if trainer.interrupted:
        results["status"] = "interrupted"
    elif _stopped_by_time_limit(trainer):
        # Not "completed": resume=true continues it (with a larger trainer.max_time, or none).
        results["status"] = "time_limit"
        results["error"] = (
            f"trainer.max_time={cfg.trainer.get('max_time')} ran out at step "
            f"{trainer.global_step} of {int(trainer.estimated_stepping_batches)}; resume=true "
            "with a larger trainer.max_time (or none) continues it"
        )
    if trainer.is_global_zero:
        write_json_atomic(run_dir / METRICS_FILE, results)
        _log_hparams(trainer, cfg, results)
    log.info("Results in %s: %s", run_dir, _headline(results))
    return results


def _stopped_by_time_limit(trainer: Any) -> bool:
    """Whether ``trainer.max_time`` ended the fit before ``max_epochs``."""
    from lightning.pytorch.callbacks import Timer

    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    remaining = timers[0].time_remaining() if timers else None
    # current_epoch counts a stopped epoch as done: compare optimizer steps instead.
    unfinished = trainer.global_step < trainer.estimated_stepping_batches
    return remaining is not None and remaining <= 0 and unfinished


def _thread_count(setting: int | str | None) -> int:
    """``auto``: this process's CPUs (its Slurm allocation) divided by the parallel sweep jobs."""
    import torch

    from cnnlab.cluster import allocated_cpus

    if setting is None:
        return torch.get_num_threads()
    if setting != "auto":
        return int(setting)
    from hydra.core.hydra_config import HydraConfig

    cores = allocated_cpus()
    parallel = 1
    if HydraConfig.initialized():
        n_jobs = int(HydraConfig.get().launcher.get("n_jobs") or 1)
        parallel = n_jobs if n_jobs > 0 else cores  # joblib: -1 means one job per core
    return max(1, cores // parallel)


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _headline(results: dict[str, Any]) -> str:
    keys = ("train/acc", "val/acc", "val/acc_best", "test/acc", "wall_time_s")
    return ", ".join(f"{k}={results[k]:.4f}" for k in keys if results.get(k) is not None)


def _log_hparams(trainer: Any, cfg: DictConfig, results: dict[str, Any]) -> None:
    """TensorBoard's HParams, CSV and MLflow: the run's hyperparameters and final metrics."""
    from cnnlab.hparams import log_run

    log_run(trainer, cfg, results)


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    run_dir = Path(cfg.paths.output_dir)
    previous = read_metrics(run_dir) or {}
    if previous.get("status") == "completed":
        return
    write_json_atomic(
        run_dir / METRICS_FILE,
        {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        },
    )


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    _State.task_started = True
    try:
        results = train(cfg)
    except CnnlabError as err:
        if Path(cfg.paths.output_dir).is_dir() and not isinstance(err, RunExistsError):
            _record_failure(cfg, err)
        if _in_multirun():
            raise
        print(f"cnnlab: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        _record_failure(cfg, err)
        raise
    # The sweeper optimizes the returned value (e.g. Optuna maximizes best val accuracy).
    value = results.get(cfg.get("optimized_metric") or "val/acc_best")
    return float(value) if value is not None else None


def main() -> None:
    """Console entry point; configuration errors exit with status 2."""
    try:
        sys.argv[1:1] = user_config_overrides()  # $CNNLAB_CONFIG_DIR; explicit arguments win
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    try:
        _hydra_main()
    except SystemExit as exit_:
        # Hydra exits 1 on composition errors (unknown group option, unknown key) before the
        # task starts; those are configuration errors like the ones validate_config raises.
        if exit_.code == 1 and not (_State.task_started or jobs_were_launched()):
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
