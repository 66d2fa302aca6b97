"""The CSV and MLflow loggers beside TensorBoard get the run's metrics, hyperparameters and tags."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import train_in_process

TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "print_config=false",
]


def test_csv_and_mlflow_loggers_record_the_run(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    log_dir, run = tmp_path / "outputs", tmp_path / "outputs" / "runs" / "r1"
    metrics = train_in_process(
        [f"paths.log_dir={log_dir}", "logger=[tensorboard,csv,mlflow]", "tags=[baseline]", *TINY],
        run,
    )
    assert metrics["status"] == "completed"

    with (run / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    epochs = {r["epoch"] for r in rows if r.get("val/acc")}
    assert epochs == {"0", "1"}
    assert any(r.get("hp/val/acc_best") for r in rows)

    client = mlflow.tracking.MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("cnnlab")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.tags["mlflow.runName"] == "runs/r1"
    assert found.data.tags["baseline"] == "true"
    assert found.data.params["optimizer.lr"] == "0.001"
    assert found.data.params["model"] == "small_cnn"
    assert found.data.metrics["hp/val/acc_best"] == pytest.approx(metrics["val/acc_best"])
    assert found.data.metrics["val/acc"] == pytest.approx(metrics["val/acc"])
    assert not (Path.cwd() / "mlruns").exists()
