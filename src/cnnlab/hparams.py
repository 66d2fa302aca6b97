"""TensorBoard's HParams view of the runs: the keys that differ between runs first.

TensorBoard takes the first ``_hparams_/experiment`` summary it finds as the column list of the
whole logdir, so one written per run (Lightning's ``log_hyperparams``) hides the keys of every
other run. cnnlab writes none. TensorBoard then builds the columns from the session start
info of every run it sees under the logdir (one sweep, or all of ``outputs/``), marks the keys
whose values differ, and its HParams dashboard lists those first and displays the first five
by default. The session of a run lives in ``<run>/hparams/`` and holds only the final metrics
(``hp/train/acc`` ...), which become the dashboard's metric columns; the training curves stay
in ``<run>/`` itself, so TensorBoard names each run after its directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

HPARAMS_SUBDIR = "hparams"
# Final metrics shown as the HParams columns (from metrics.json), written as hp/<name>.
FINAL_METRICS = ("train/acc", "val/acc", "val/acc_best", "test/acc", "test/loss")
# Config sections that say what was trained (paths, callbacks, loggers say how it was run).
SECTIONS = ("seed", "tags", "data", "model", "optimizer", "scheduler", "module", "trainer")
# instantiate() plumbing, not hyperparameters.
PLUMBING_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_"}
# Config groups whose choice says where and how a run was recorded, not what was trained.
OPERATIONAL_GROUPS = ("hydra", "paths", "logger", "callbacks/progress_bar")

HParamValue = bool | int | float | str


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without its ``hparams.yaml`` (``.hydra/`` has the config)."""

    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.flush()


def run_hparams(cfg: DictConfig, choices: dict[str, Any] | None = None) -> dict[str, HParamValue]:
    """The run's hyperparameters as flat ``section.key`` names, plus the chosen config options.

    Values that are interpolations (``data.seed: ${seed}``, ``default_root_dir``) copy another
    key or a path and are left out, as are ``_target_`` and the other instantiate() keys.
    """
    flat: dict[str, HParamValue] = {}
    for section in SECTIONS:
        if section in cfg:
            _flatten(cfg, section, section, flat)
    for group, option in sorted((choices or {}).items()):
        if not group.startswith(OPERATIONAL_GROUPS) and group not in flat:
            flat[group] = "none" if option is None else str(option)
    return flat


def _flatten(node: DictConfig, key: str, name: str, out: dict[str, HParamValue]) -> None:
    if key in PLUMBING_KEYS or OmegaConf.is_interpolation(node, key):
        return
    value = node[key]
    if isinstance(value, DictConfig):
        for child in value:
            _flatten(value, str(child), f"{name}.{child}", out)
    elif isinstance(value, ListConfig):
        out[name] = json.dumps(OmegaConf.to_container(value, resolve=True))
    elif value is None:
        out[name] = "none"
    elif isinstance(value, bool | int | float | str):
        out[name] = value
    else:
        out[name] = str(value)


def run_name(run_dir: Path, log_dir: Path | str | None) -> str:
    """The run directory relative to ``paths.log_dir`` (e.g. ``multiruns/<date>/<time>/3``)."""
    run_dir = Path(run_dir).resolve()
    if log_dir is not None:
        try:
            return str(run_dir.relative_to(Path(log_dir).resolve()))
        except ValueError:
            pass
    return str(run_dir)


def write_hparams(
    run_dir: Path,
    hparams: dict[str, HParamValue],
    results: dict[str, Any],
    name: str,
) -> Path:
    """Write the run's HParams session (start info, final metrics, end status); return its dir."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    out = Path(run_dir) / HPARAMS_SUBDIR
    now = time.time()
    metrics = [
        Summary.Value(tag=f"hp/{key}", simple_value=float(results[key]))
        for key in FINAL_METRICS
        if results.get(key) is not None
    ]
    completed = results.get("status") == "completed"
    status = api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_UNKNOWN
    end = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=now),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    end_pb = Summary()
    end_pb.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(end),
        tensor=metadata.NULL_TENSOR,
    )
    writer = EventFileWriter(str(out))
    try:
        for summary_pb in (
            summary_v2.hparams_pb(hparams, trial_id=name, start_time_secs=int(now)),
            Summary(value=metrics),
            end_pb,
        ):
            writer.add_event(Event(wall_time=now, step=0, summary=summary_pb))
    finally:
        writer.close()
    return out


def log_run(trainer: Any, cfg: DictConfig, results: dict[str, Any]) -> None:
    """Give every logger of the run its hyperparameters and final metrics, then close them."""
    from hydra.core.hydra_config import HydraConfig

    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    hparams = run_hparams(cfg, choices)
    run_dir = Path(cfg.paths.output_dir)
    name = run_name(run_dir, cfg.paths.get("log_dir"))
    final = {f"hp/{k}": float(results[k]) for k in FINAL_METRICS if results.get(k) is not None}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            write_hparams(run_dir, hparams, results, name)
        else:  # CSV, MLflow, ...: their own hyperparameter and metric stores
            logger.log_hyperparams(hparams)
            if final:
                logger.log_metrics(final, step=trainer.global_step)
            if type(logger).__name__ == "MLFlowLogger":
                _tag_mlflow_run(logger, name, list(cfg.get("tags") or []))
        logger.finalize("success")


def _tag_mlflow_run(logger: Any, name: str, tags: list[str]) -> None:
    """Name the MLflow run after the run directory and attach the run's tags."""
    client, run_id = logger.experiment, logger.run_id
    client.set_tag(run_id, "mlflow.runName", name)
    for tag in tags:
        client.set_tag(run_id, str(tag), "true")
