"""Train one configuration: ``python -m cnnlab.train [overrides]`` (``-m`` for a sweep)."""

from __future__ import annotations

import logging
import os
import sys
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
from cnnlab.errors import CnnlabError, ConfigError, RunFailedError
from cnnlab.interrupts import SWEEP, GracefulStop, RunInterrupted, record_interrupt, stop_on_signals
from cnnlab.launchers import jobs_were_launched, was_dry_run
from cnnlab.run_lifecycle import (
    RunState,
    claim,
    discard_unstarted,
    discard_unstarted_sweep,
    holds_run,
    record_failure,
    running_record,
    save_run_config,
)
from cnnlab.rundir import METRICS_FILE, ensure_writable, run_dir_lock, write_json_atomic

log = logging.getLogger("cnnlab.train")

register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, and write ``metrics.json`` into the run directory."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    quiet_third_party()
    check_output_dir(cfg)  # before run_dir is used: a paths.output_dir override is refused
    run_dir = Path(cfg.paths.output_dir)
    RunState.fresh, RunState.owned, RunState.started = not holds_run(run_dir), False, False
    if rank_zero_only.rank != 0:  # DDP ranks > 0 join the run that rank 0 holds
        _check(cfg)
        return _fit_and_test(cfg, run_dir)
    ensure_writable(run_dir, cfg.paths.min_free_mb)
    with run_dir_lock(run_dir, keep=lambda: RunState.started), stop_on_signals():
        try:
            RunState.entries_at_claim = set(os.listdir(run_dir))
            _check(cfg)
            previous = claim(cfg, run_dir, _in_multirun())
            if cfg.resume and previous and previous.get("status") == "completed":
                # printed, not logged: the run's train.log stays as the run left it
                print(f"cnnlab: {run_dir} already completed (resume=true): skipping it.")
                return previous
            announce_run(cfg, run_dir)
            return _fit_and_test(cfg, run_dir)
        except BaseException:
            if RunState.fresh and not RunState.started:
                if _in_multirun():  # the sweep's record of this job: its config and failure
                    save_run_config(run_dir, cfg)
                else:
                    discard_unstarted(run_dir)  # a typo leaves no failed run directory behind
            raise


def _check(cfg: DictConfig) -> None:
    """Every check of the command's config, before any work."""
    fill_from_folder(cfg.data)  # data=image_folder data.root=DIR alone: classes, size from DIR
    validate_config(cfg)


def _fit_and_test(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import lightning as L
    import torch
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from cnnlab.build import build_datamodule, build_module, build_trainer
    from cnnlab.checkpoint import check_fits, read_checkpoint
    from cnnlab.cluster import thread_count
    from cnnlab.models.common import count_parameters
    from cnnlab.rundir import ENVIRONMENT_FILE, environment

    ckpt_path = cfg.ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.resume:
        ckpt_path = str(last) if last.is_file() else None
        log.info("Resuming from %s", ckpt_path or "scratch (no last.ckpt yet)")

    torch.set_num_threads(thread_count(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    model = module.model
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if ckpt_path and ckpt_path != "last":
        check_fits(module, read_checkpoint(ckpt_path), ckpt_path)
    trainer = build_trainer(cfg)

    def start_run() -> None:  # at fit start: the data loaded, the run begins
        if rank_zero_only.rank == 0 and not RunState.started:
            if not holds_run(run_dir):
                save_run_config(run_dir, cfg)
            write_json_atomic(run_dir / ENVIRONMENT_FILE, environment(Path.cwd()))
            write_json_atomic(run_dir / METRICS_FILE, running_record())
            RunState.started = True

    stopper = GracefulStop(last, resume_from=ckpt_path, on_fit_start=start_run)
    trainer.callbacks.insert(0, stopper)

    try:
        results = _fit_then_test(cfg, trainer, module, datamodule, stopper)
    except RunInterrupted as err:
        record_interrupt(trainer, run_dir, err)
        raise
    results["params"] = count_parameters(model)
    results["wall_time_s"] = round(stopper.wall_time_s(), 3)
    if planned := _planned_if_cut_by_time_limit(trainer):
        # Not "completed": resume=true continues it (with a larger trainer.max_time, or none).
        results["status"] = "time_limit"
        results["error"] = (
            f"trainer.max_time={cfg.trainer.get('max_time')} ran out at step "
            f"{trainer.global_step} of {planned}; resume=true "
            "with a larger trainer.max_time (or none) continues it"
        )
    if trainer.is_global_zero:
        write_json_atomic(run_dir / METRICS_FILE, results)
        _log_hparams(trainer, cfg, results)
    log.info("Results in %s: %s", run_dir, _headline(results))
    return results


def _fit_then_test(
    cfg: DictConfig, trainer: Any, module: Any, datamodule: Any, stopper: GracefulStop
) -> dict[str, Any]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    ckpt_path = stopper.resume_from
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except MisconfigurationException as err:
        # e.g. a monitor key that is never logged: raised at the end of the first validation
        raise ConfigError(f"{err} (monitor={cfg.monitor!r})") from None
    stopper.raise_if_signalled(trainer)
    if trainer.global_step == 0:
        raise RunFailedError(
            f"No optimizer step was taken (trainer.max_epochs={cfg.trainer.max_epochs}, "
            f"data.batch_size={cfg.data.get('batch_size')}, data.drop_last="
            f"{cfg.data.get('drop_last')}): the run is not complete."
        )
    fit_metrics = {**stopper.restored_metrics, **_scalars(trainer.callback_metrics)}
    results: dict[str, Any] = {
        "status": "completed",
        **{k: fit_metrics.get(k) for k in ("train/loss", "train/acc", "val/loss", "val/acc")},
        "val/acc_best": module.best_val_acc,
        "best_epoch": module.best_epoch,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "data": datamodule.describe() if hasattr(datamodule, "describe") else None,
    }
    if cfg.test_after_fit:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results["test_checkpoint"] = best or "final weights"
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        stopper.raise_if_signalled(trainer)
        results.update(_scalars(trainer.callback_metrics, prefix="test/"))
    return results


def _planned_if_cut_by_time_limit(trainer: Any) -> int | None:
    """The run's planned optimizer steps if ``trainer.max_time`` ended the fit before them."""
    from lightning.pytorch.callbacks import Timer

    from cnnlab.callbacks import planned_steps

    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    remaining = timers[0].time_remaining() if timers else None
    if remaining is None or remaining > 0:
        return None
    # current_epoch counts a stopped epoch as done: compare optimizer steps instead. (Only
    # here: estimated_stepping_batches iterates the train loader once more, and that iterator's
    # persistent workers, never torn down, cost a later run in the process a 5 s wait.)
    planned = planned_steps(trainer)
    return planned if trainer.global_step < planned else None


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _headline(results: dict[str, Any]) -> str:
    keys = ("train/acc", "val/acc", "val/acc_best", "test/acc", "wall_time_s")
    return ", ".join(f"{k}={results[k]:.4f}" for k in keys if results.get(k) is not None)


def _log_hparams(trainer: Any, cfg: DictConfig, results: dict[str, Any]) -> None:
    """TensorBoard's HParams, CSV and MLflow: the run's hyperparameters and final metrics."""
    from cnnlab.hparams import log_run

    log_run(trainer, cfg, results)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    RunState.task_started = True
    try:
        results = train(cfg)
    except RunInterrupted as err:
        if _in_multirun():
            raise  # ends the sweep; main() says which jobs did not run
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:  # one message for a DDP run, not one per rank
            print(f"cnnlab: {err}; {_resume_hint(cfg)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except (CnnlabError, OSError) as err:
        record_failure(Path(cfg.paths.output_dir), err, _in_multirun())
        if _in_multirun():
            raise
        code = err.exit_code if isinstance(err, CnnlabError) else 1 if RunState.started else 2
        print(f"cnnlab: error: {_message(err)}", file=sys.stderr)
        sys.exit(code)
    except Exception as err:
        record_failure(Path(cfg.paths.output_dir), err, _in_multirun())
        raise
    # The sweeper optimizes the returned value (e.g. Optuna maximizes best val accuracy).
    value = results.get(cfg.get("optimized_metric") or "val/acc_best")
    return float(value) if value is not None else None


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, CnnlabError):
        where = f": {err.filename}" if err.filename else ""
        return f"{(err.strerror or str(err)).lower()}{where}"
    return str(err)


def _resume_hint(cfg: DictConfig) -> str:
    return f"continue it with resume=true hydra.run.dir={cfg.paths.output_dir}"


def main() -> None:
    """Console entry point: exit 2 for a config error before any work, 1 for a failed run or a
    sweep with a failed job, 128 + signal (130 Ctrl-C, 143 SIGTERM) when interrupted."""
    try:
        # $CNNLAB_CONFIG_DIR joins the command's overrides (Hydra's parser wants them in one
        # block, options such as -m around it), unless it sets hydra.searchpath: explicit wins.
        args = sys.argv[1:]
        if not any(a.lstrip("+~").startswith("hydra.searchpath=") for a in args):
            at = next((i for i, a in enumerate(args) if "=" in a and a[0] != "-"), len(args))
            sys.argv[1 + at : 1 + at] = user_config_overrides()
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    try:
        _hydra_main()
    except RunInterrupted as err:  # a sweep job: the basic launcher runs no further job
        print(
            f"cnnlab: sweep interrupted ({err}); the jobs after it did not run. Finish the "
            f"sweep with the same command plus resume=true hydra.sweep.dir={SWEEP.directory}",
            file=sys.stderr,
        )
        raise SystemExit(err.exit_code) from None
    except SystemExit as exit_:
        # Hydra exits 1 on composition errors (unknown group option, unknown key) before the
        # task starts; those are configuration errors like the ones validate_config raises.
        if exit_.code in (1, 2) and not (RunState.task_started or jobs_were_launched()):
            if SWEEP.started:  # a job's config failed before any job ran
                discard_unstarted_sweep(SWEEP.directory)
            raise SystemExit(2) from None
        raise
    finally:
        if was_dry_run():  # the sweep directory Hydra made holds only multirun.yaml
            discard_unstarted_sweep(SWEEP.directory)
        elif jobs_were_launched() and SWEEP.directory is not None:
            from cnnlab.status import print_summary

            print_summary(SWEEP.directory)


if __name__ == "__main__":
    main()
