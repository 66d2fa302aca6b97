"""Sweeps with each launcher, failing jobs, DDP on CPU, and the results report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from cnnlab.report import write_report
from cnnlab.rundir import read_metrics
from forkrun import run_module
from killpoints import killable_env

from conftest import ROOT, run_cli

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


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_tiny_grid_sweep_writes_four_runs_and_a_report(launcher: str, tmp_path: Path) -> None:
    """Two image-file datasets (per-sample presets, DataLoader workers: under joblib they run
    inside loky's worker processes) times two learning rates."""
    from datafiles import write_celeba, write_image_folder

    data, sweep = tmp_path / "data", tmp_path / "sweep"
    write_image_folder(data / "PetImages", classes=("Cat", "Dog"), per_class=10, size=(24, 24))
    write_celeba(data, (12, 0, 0), layout="partial", scale=0.25)
    run = run_cli(
        "cnnlab.train",
        "-m",
        "data=cats_vs_dogs,celeba_smile",
        "optimizer.lr=0.001,0.01",
        f"paths.data_dir={data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.image_size=16",
        "data.num_workers=1",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        f"hydra/launcher={launcher}",
        *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []),
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # the sweep ends by saying where it is, how its jobs ended and how to see the results
    assert f"Sweep {sweep}: 4 completed." in run.stdout
    assert f"Report: python -m cnnlab.report {sweep}" in run.stdout
    jobs = _completed_jobs(sweep)
    assert len(jobs) == 4 and all(j["status"] == "completed" for j in jobs)
    assert sorted(j["data"]["name"] for j in jobs) == ["cats_vs_dogs"] * 2 + ["celeba_smile"] * 2
    # joblib's parallel jobs divide the cores between them (torch_threads=auto)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2) if launcher == "joblib" else cores
    for job in "0123":
        env = json.loads((sweep / job / "environment.json").read_text())
        assert env["cpu_threads"] == threads, (job, env["cpu_threads"])
    paths = write_report(sweep)
    table = paths["md"].read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "completed" in line]
    assert len(rows) == 4
    assert "| data | optimizer.lr |" in table
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 4
    assert paths["png"].stat().st_size > 1000


BAD_JOB = "sweep job seed=-1 trainer.max_epochs=1: seed=-1 is not valid"


@pytest.mark.parametrize(
    ("launcher", "override", "message"),
    [
        *[(la, "seed=1,-1", BAD_JOB) for la in ("basic", "parallel", "joblib", "submitit_local")],
        ("basic", "optimizer.lr=0.1,0", "sweep job optimizer.lr=0 trainer.max_epochs=1: "),
        ("basic", "model.width=8,16", "Could not override 'model.width'"),
    ],
)
def test_a_bad_value_in_any_job_of_a_sweep_is_exit_2_before_any_job_runs(
    launcher: str, override: str, message: str, tmp_path: Path
) -> None:
    sweep = tmp_path / "new" / "sweep"
    run = run_cli(
        "cnnlab.train",
        "-m",
        override,
        "trainer.max_epochs=1",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert list(tmp_path.iterdir()) == [], "a refused sweep leaves no directory behind"


def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_module(
        "cnnlab.train",
        ["-m", *TINY, *FAULT, "+callbacks.fault.action=none,raise,none",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=killable_env(""), timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, "the exit code must say that a job failed"
    statuses = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert statuses["0"]["status"] == "completed"
    assert statuses["2"]["status"] == "completed", "jobs after the failure still run"
    assert statuses["1"]["status"] == "failed"
    assert "a bug in the job's code" in statuses["1"]["error"]
    assert f"Sweep {sweep}: 2 completed, 1 failed." in run.stdout
    table = write_report(sweep)["md"].read_text()
    assert "failed" in table and "a bug in the job's code" in table


PARALLEL = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
FAULT = ["+callbacks.fault._target_=killpoints.Fault"]
SWEEP_SIGNAL = "CNNLAB_TEST_SWEEP_SIGNAL"


class SignalTheSweep(L.Callback):
    """Batches of 50 ms, so that jobs overlap; with $CNNLAB_TEST_SWEEP_SIGNAL set, job 1 sends
    that signal to the sweep's process (its parent) once job 0 has completed and job 2 trains.
    A job must have its own process group (a terminal's Ctrl-C reaches the sweep's only)."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        time.sleep(0.05)
        how, hydra = os.environ.pop(SWEEP_SIGNAL, ""), HydraConfig.get()
        if not how or hydra.job.num != 1:
            return
        sweep, deadline = Path(hydra.sweep.dir), time.monotonic() + 60
        while time.monotonic() < deadline and not (
            (read_metrics(sweep / "0") or {}).get("status") == "completed"
            and (read_metrics(sweep / "2") or {}).get("status") == "running"
        ):
            time.sleep(0.02)
        if os.getpgid(0) != os.getpid():
            raise RuntimeError("the job is not in a process group of its own")
        os.kill(os.getppid(), getattr(signal, how))


def test_parallel_launcher_gives_the_basic_launchers_results(tmp_path: Path) -> None:
    deterministic = [*TINY, "trainer.deterministic=true", "logger=none", "torch_threads=1"]
    sweeps = {launcher: tmp_path / launcher for launcher in ("basic", "parallel")}
    for launcher, sweep in sweeps.items():
        run = run_cli(
            "cnnlab.train", "-m", *deterministic, "seed=1,2", f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={sweep}",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
    files = {k: sorted(str(p.relative_to(s)) for p in s.rglob("*")) for k, s in sweeps.items()}
    assert files["basic"] == files["parallel"]
    for job in ("0", "1"):
        basic, parallel = (read_metrics(sweep / job) or {} for sweep in sweeps.values())
        for metrics in (basic, parallel):
            metrics.pop("wall_time_s"), metrics.pop("test_checkpoint")
        assert basic == parallel and basic["status"] == "completed"
    bad = run_cli("cnnlab.train", "-m", *TINY, *PARALLEL[:1], "hydra.launcher.n_jobs=0",
                  f"hydra.sweep.dir={tmp_path / 'bad'}")  # fmt: skip
    assert bad.returncode == 2 and "hydra.launcher.n_jobs=0 is not valid" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_parallel_job_that_fails_or_dies_fails_only_itself(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_module(
        "cnnlab.train",
        ["-m", *TINY, *PARALLEL, *FAULT,
         "+callbacks.fault.action=none,raise,kill", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=killable_env(""), timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    done, failed, killed = (read_metrics(sweep / job) or {} for job in "012")
    assert done["status"] == "completed"
    assert failed["status"] == "failed" and "a bug in the job's code" in failed["error"]
    assert killed["status"] == "running", "a dead process's run reads as interrupted"
    assert "#2 ended without a result (killed by SIGKILL)" in run.stdout + run.stderr
    cores = len(os.sched_getaffinity(0))  # torch_threads=auto: the cores divided by the jobs
    threads = json.loads((sweep / "0" / "environment.json").read_text())["cpu_threads"]
    assert threads == max(1, cores // 2)


class SlowBatches(L.Callback):
    """20 ms a batch, so that a sweep's longer job is still training when the shorter ends."""

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(0.02)


def test_a_parallel_job_left_alone_takes_the_cores_of_the_jobs_that_ended(tmp_path: Path) -> None:
    """Job 1 trains longest; job 2 starts when job 0 ends, so only once job 2 has ended is no
    job left to start, and job 1 takes the second core."""
    env = {**os.environ, "SLURM_CPUS_PER_TASK": "2"}  # 2 cores, whatever the machine has
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
    logs = {}
    for threads, epochs in (("auto", "1,40,1"), ("1", "1,10")):
        sweep = tmp_path / threads
        args = ["-m", *tiny, *PARALLEL, "+callbacks.slow._target_=test_sweeps.SlowBatches",
                f"trainer.max_epochs={epochs}", f"torch_threads={threads}",
                f"hydra.sweep.dir={sweep}"]  # fmt: skip
        run = run_module("cnnlab.train", args, cwd=ROOT, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        for job in "01":  # each of the 2 jobs side by side starts on one core
            assert json.loads((sweep / job / "environment.json").read_text())["cpu_threads"] == 1
        jobs = "012"[: epochs.count(",") + 1]
        logs[threads] = [(sweep / job / "train.log").read_text().splitlines() for job in jobs]
    short, long, last = logs["auto"]
    assert not any("torch threads" in line for line in short + last)
    [switch] = [line for line in long if "torch threads 1 -> 2" in line]
    assert switch[:24] >= last[-1][:24], "job 1 took job 0's core while job 2 still had to run"
    assert not any("torch threads" in line for line in logs["1"][1])  # a given number is kept


def test_a_parallel_sweep_runs_as_pid_1_of_a_container(tmp_path: Path) -> None:
    """A job checks that its launcher is alive by its parent's pid, not by pid 1 (an orphan's
    parent): in a container the launcher itself is pid 1."""
    probe = subprocess.run(["unshare", "-fp", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare with a new pid namespace (root)")
    sweep = tmp_path / "sweep"
    argv = ["unshare", "-fp", "--mount-proc", sys.executable, "-m", "cnnlab.train", "-m",
            *TINY, *PARALLEL, "seed=1,2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [(read_metrics(sweep / job) or {}).get("status") for job in "01"] == ["completed"] * 2


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_parallel_sweep_resumably(how: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, *PARALLEL, "+callbacks.signal._target_=test_sweeps.SignalTheSweep",
            "seed=1,2,3,4", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**killable_env(""), SWEEP_SIGNAL: how}
    stopped = run_module("cnnlab.train", args, cwd=ROOT, env=env, timeout=300)
    assert stopped.returncode == 128 + getattr(signal, how), stopped.stderr[-3000:]
    assert "jobs #1, #2 stopped resumably); the jobs after it did not run" in stopped.stderr
    statuses = [(read_metrics(sweep / job) or {}).get("status") for job in "0123"]
    assert statuses == ["completed", "interrupted", "interrupted", None]
    if how == "SIGINT":
        return  # the same resume follows either signal
    finished = run_cli("cnnlab.train", *args, "resume=true", cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "0 already completed (resume=true): skipping it" in finished.stdout
    assert [(read_metrics(sweep / job) or {}).get("status") for job in "0123"] == ["completed"] * 4


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
