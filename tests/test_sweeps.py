"""Sweeps with each launcher, failing jobs, DDP on CPU, and the results report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from cnnlab.report import write_report

from conftest import run_cli

TINY = [
    "data=synthetic",
    "data.num_train=96",
    "data.num_test=32",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
    "model.hidden=[16]",
    "model.channels=[4,8]",
]


def _completed_jobs(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_tiny_grid_sweep_writes_four_runs_and_a_report(launcher: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli(
        "cnnlab.train",
        "-m",
        *TINY,
        "model.hidden=[16],[32]",
        "optimizer.lr=0.001,0.01",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = _completed_jobs(sweep)
    assert len(jobs) == 4 and all(j["status"] == "completed" for j in jobs)
    paths = write_report(sweep)
    table = paths["md"].read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "completed" in line]
    assert len(rows) == 4
    assert "| model.hidden | optimizer.lr |" in table
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 4
    assert paths["png"].stat().st_size > 1000


def test_joblib_divides_threads_between_parallel_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli(
        "cnnlab.train",
        "-m",
        *TINY,
        "seed=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    import os

    cores = len(os.sched_getaffinity(0))
    for job in ("0", "1"):
        env = json.loads((sweep / job / "environment.json").read_text())
        assert env["cpu_threads"] == max(1, cores // 2)


def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli("cnnlab.train", "-m", *TINY, "data.batch_size=16,0,8", f"hydra.sweep.dir={sweep}")
    assert run.returncode != 0, "the exit code must say that a job failed"
    statuses = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert statuses["0"]["status"] == "completed"
    assert statuses["2"]["status"] == "completed", "jobs after the failure still run"
    assert statuses["1"]["status"] == "failed"
    assert "data.batch_size=0 is not valid" in statuses["1"]["error"]
    table = write_report(sweep)["md"].read_text()
    assert "failed" in table and "data.batch_size=0 is not valid" in table


def test_submitit_local_launcher_runs_a_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli(
        "cnnlab.train",
        "-m",
        *TINY,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (job,) = _completed_jobs(sweep)
    assert job["status"] == "completed"
    assert (sweep / ".submitit").is_dir()


def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    run = run_cli(
        "cnnlab.train",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "torch_threads=1",
        f"hydra.run.dir={out}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    # 96 images minus a 20% validation split = 77, 38 per rank, batches of 16: 3 steps each.
    assert metrics["global_step"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list(tmp_path.iterdir())) == 1, "the second rank must not create its own run"
    # Metrics are synchronized: both ranks' halves of the validation set add up to what a
    # single process measures on the whole of it.
    from cnnlab.eval import evaluate

    single = evaluate([f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}", "split=val"])
    assert single["metrics"]["val/acc"] == pytest.approx(metrics["val/acc_best"], abs=1e-6)


def _fake_run(
    root: Path,
    name: str,
    overrides: list[str],
    metrics: dict | None,
    expected: dict | None = None,
    experiment: str = "x",
) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "expected": expected}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = {"hydra": {"runtime": {"choices": {"experiment": experiment, "model": "m"}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))


def test_report_from_hand_written_runs(tmp_path: Path) -> None:
    expected = {"metric": "val/acc", "value": 0.80, "band": 0.02, "source": "paper"}
    for i, (seed, acc) in enumerate([(0, 0.80), (1, 0.82), (2, 0.84)]):
        _fake_run(
            tmp_path,
            str(i),
            [f"seed={seed}"],
            {
                "status": "completed",
                "train/acc": 0.9,
                "val/acc": acc,
                "val/acc_best": acc,
                "test/acc": acc,
                "best_epoch": 3,
                "wall_time_s": 10.0,
                "params": 1234,
            },
            expected,
        )
    _fake_run(
        tmp_path,
        "3",
        ["model.width=32", "seed=0"],
        {
            "status": "completed",
            "train/acc": 0.95,
            "val/acc": 0.70,
            "val/acc_best": 0.71,
            "test/acc": 0.70,
            "best_epoch": 1,
            "wall_time_s": 20.0,
            "params": 4321,
        },
        expected,
    )
    _fake_run(
        tmp_path,
        "4",
        ["model.width=64", "seed=0"],
        {"status": "failed", "error": "NonFiniteLossError: loss became nan at step 7"},
    )
    _fake_run(tmp_path, "5", ["model.width=128", "seed=0"], None)  # killed before any metrics

    paths = write_report(tmp_path)
    table = paths["md"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 0, 1, 2 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "-" and cells[2] == "3" and cells[3] == "completed"
    assert cells[4] == "1,234"
    assert cells[6] == "0.8200 ± 0.0200"  # val acc mean ± std over the three seeds
    assert cells[8] == "4 ± 0"  # best epoch, 1-based (metrics.json holds Lightning's 0-based 3)
    assert cells[10] == "val 0.80"
    assert cells[11] == "+0.0200 ± 0.0200 ✓"
    # A swept value is not the experiment's protocol: no published comparison for it.
    row32 = next(line for line in table.splitlines() if line.startswith("| 3 "))
    assert "not compared: model.width differs from the experiment's protocol" in row32
    assert "✗" not in row32
    assert "| 4 | 64 | 1 | failed |" in table
    assert "| 5 | 128 | 1 | incomplete |" in table
    assert "NonFiniteLossError: loss became nan at step 7" in table
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed", "incomplete"]
    assert rows[1]["val/acc"] == "0.82" and rows[1]["seed"] == "1" and rows[1]["best_epoch"] == "4"
    # A second report keeps the first one instead of overwriting it.
    write_report(tmp_path)
    (history,) = (tmp_path / ".report_history").iterdir()
    assert sorted(p.name for p in history.iterdir()) == ["results.csv", "results.md", "results.png"]
