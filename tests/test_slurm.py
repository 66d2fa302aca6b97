"""The Slurm launcher's parts that need no cluster: dry run, derived resources, waiting without
sacct, provenance, CPU allocation, the status command and the run-directory lock."""

from __future__ import annotations

import errno
import json
import logging
import socket
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from cnnlab import cluster, submitted
from cnnlab.errors import RunExistsError
from cnnlab.provenance import package_commit, provenance
from cnnlab.rundir import run_dir_lock
from cnnlab.status import format_rows, sweep_status
from forkrun import run_module
from killpoints import killable_env

from conftest import ROOT, run_cli

TINY = ["data=synthetic", "trainer.max_epochs=1", "callbacks.progress_bar=null"]


def _dry_run(tmp_path: Path, *args: str) -> str:
    run = run_cli(
        "cnnlab.train",
        "-m",
        "hydra/launcher=slurm",
        *TINY,
        *args,
        "hydra.launcher.dry_run=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "sweep").exists(), "a dry run submits nothing and leaves no sweep"
    assert "Sweep " not in run.stdout  # no closing summary of jobs that do not exist
    return run.stdout


def test_dry_run_prints_the_sbatch_script_with_modest_defaults(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "seed=1,2")
    assert "# dry run: 2 job(s), nothing submitted" in out
    for line in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=4GB",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in out, out
    assert "--gpus-per-node" not in out, "a CPU trainer requests no GPU"


def test_dry_run_derives_tasks_and_gpus_from_the_trainer(tmp_path: Path) -> None:
    out = _dry_run(
        tmp_path,
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.setup=[module load cuda]",
        "+hydra.launcher.additional_parameters.mail_type=END",
    )
    for line in (
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --mail-type=END",
        "module load cuda",
    ):
        assert line in out, out


@pytest.mark.parametrize(
    ("accelerator", "devices", "gpus", "tasks"),
    [("auto", 1, None, 1), ("cpu", 2, None, 2), ("gpu", 2, 2, 2), ("cuda", [0, 1, 2], 3, 3)],
)
def test_resources_from_the_trainer(accelerator: str, devices, gpus, tasks) -> None:
    assert cluster.slurm_gpus(accelerator, devices) == gpus
    assert cluster.slurm_tasks(devices) == tasks


class _VanishedJob:
    """A submitted job that never writes a result and is no longer in the queue."""

    job_id = "41_0"

    class paths:
        stderr = Path("/x/41_0_0_log.err")

    def done(self) -> bool:
        return False


def test_a_job_that_left_the_queue_without_sacct_fails_with_a_message(monkeypatch) -> None:
    monkeypatch.setattr(cluster, "queued_job_ids", lambda ids: set())
    monkeypatch.setattr(submitted, "VANISH_GRACE_S", 0.0)
    results = submitted.wait_for_jobs(
        [(0, ["seed=1"], Path("/x/0"))], [_VanishedJob()], accounting=False
    )
    assert results[0].status == JobStatus.FAILED
    message = str(results[0]._return_value)
    assert "41_0 left the queue without a result" in message and "without sacct" in message
    assert "41_0_0_log.err" in message


def test_threads_follow_the_slurm_allocation(monkeypatch) -> None:
    from cnnlab.cluster import thread_count

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cluster.allocated_cpus() == 3
    assert thread_count("auto") == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert cluster.allocated_cpus() >= 1


def test_provenance_names_the_slurm_job_the_command_and_the_code(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository
    for key, value in {
        "SLURM_JOB_ID": "57",
        "SLURM_ARRAY_JOB_ID": "56",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURMD_NODENAME": "gpu07",
        "SLURM_RESTART_COUNT": "2",
        "CNNLAB_COMMAND": "python -m cnnlab.train -m seed=1,2",
    }.items():
        monkeypatch.setenv(key, value)
    info = provenance()
    assert info["command"] == "python -m cnnlab.train -m seed=1,2"
    assert info["slurm"]["job_id"] == "56_1" and info["slurm"]["array_task_id"] == 1
    assert info["slurm"]["node"] == "gpu07" and info["slurm"]["restart_count"] == 2
    assert info["git_commit"] and info["git_commit"] == package_commit()


def test_status_lists_run_directories_and_submitted_jobs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cluster, "queue_states", lambda ids: {"9_2": "PENDING"})
    sweep = tmp_path / "sweep"
    runs = {
        "0": {"status": "completed", "val/acc_best": 0.75},
        "1": {"status": "failed", "error": "RunFailedError: loss is nan\ntraceback"},
    }
    jobs = {}
    for name in ("0", "1", "2"):
        (sweep / name).mkdir(parents=True)
        if name in runs:
            (sweep / name / "metrics.json").write_text(json.dumps(runs[name]))
        jobs[name] = {"job_id": f"9_{name}", "run_dir": str(sweep / name)}
    (sweep / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    rows = sweep_status(sweep)
    assert [(r["job"], r["status"], r["slurm_job"]) for r in rows] == [
        ("0", "completed", "9_0"),
        ("1", "failed", "9_1"),
        ("2", "pending", "9_2"),
    ]
    assert rows[1]["error"] == "RunFailedError: loss is nan"
    table = format_rows(rows)
    assert "1 completed, 1 failed, 1 pending" in table and "0.7500" in table
    run = run_cli("cnnlab.status", str(tmp_path / "missing"))
    assert run.returncode == 2 and "is not a directory" in run.stderr
    helped = run_cli("cnnlab.status", "--help")
    assert helped.returncode == 0 and "sweep_dir" in helped.stdout and "jobs.json" in helped.stdout


def test_status_calls_a_dead_run_interrupted_and_lists_jobs_never_started(
    tmp_path: Path,
) -> None:
    """A local sweep (no jobs.json) of seed=1,2,3: job 0 completed, job 1's process is gone
    (killed: its record still says running), job 2 never started."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    multirun = {
        "hydra": {
            "sweeper": {"_target_": "hydra_plugins.cnnlab_plugins.CnnlabGridSweeper"},
            "overrides": {"task": ["data=synthetic", "seed=1,2,3"]},
        }
    }
    (sweep / "multirun.yaml").write_text(json.dumps(multirun))
    dead = {"status": "running", "pid": 4999999, "hostname": socket.gethostname()}
    for name, metrics in {"0": {"status": "completed", "val/acc_best": 0.5}, "1": dead}.items():
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "config.yaml").write_text("seed: 1\n")
        overrides = ["data=synthetic", f"seed={int(name) + 1}"]
        (sweep / name / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    rows = sweep_status(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"),
        ("1", "interrupted"),
        ("2", "not started"),
    ]
    assert rows[2]["error"] == "data=synthetic seed=3"
    (sweep / "1" / ".lock").touch()  # the lock decides once there is one
    with run_dir_lock(sweep / "1"):
        assert sweep_status(sweep)[1]["status"] == "running"
    assert sweep_status(sweep)[1]["status"] == "interrupted"


def test_an_interrupted_record_keeps_when_and_where_the_run_started(tmp_path: Path) -> None:
    """SIGTERM (Slurm's preemption) turns the running record into an interrupted one; its
    started_at stays the run's start, not the moment of the signal."""
    import signal
    from types import SimpleNamespace

    from cnnlab.interrupts import RunInterrupted, record_interrupt

    started = {"pid": 12345, "hostname": "gpu07", "started_at": "2026-01-05T09:46:21+00:00"}
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "running", **started}))
    trainer = SimpleNamespace(is_global_zero=True, global_step=7, current_epoch=1)
    stop = RunInterrupted(signal.SIGTERM, "SIGTERM at step 7")
    record_interrupt(trainer, tmp_path, stop)  # type: ignore[arg-type]
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["global_step"] == 7
    assert {k: record[k] for k in started} == started


def test_the_lock_warns_and_goes_on_where_flock_is_unsupported(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import fcntl

    def no_flock(handle, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING), run_dir_lock(tmp_path):
        pass
    assert "does not support flock" in caplog.text and "CNNLAB_RUN_LOCK=off" in caplog.text

    def held(handle, op):
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", held)
    with pytest.raises(RunExistsError), run_dir_lock(tmp_path):
        pass
    monkeypatch.setenv("CNNLAB_RUN_LOCK", "off")
    with run_dir_lock(tmp_path):  # opt-out: flock is not even tried
        pass


def test_local_launcher_configs_raise_no_schema_warning(tmp_path: Path) -> None:
    run = run_cli(
        "cnnlab.train",
        "-m",
        "hydra/launcher=submitit_local",
        *TINY,
        "hydra.launcher.dry_run=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "# dry run: 1 job(s), nothing submitted" in run.stdout
    assert "ConfigStore" not in run.stderr, run.stderr[-2000:]


@pytest.mark.slow
def test_submitit_local_exit_codes_follow_the_rule(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    tiny = [*TINY, "data.num_train=64", "data.num_test=16", "model.channels=[4,8]"]
    run = run_module(
        "cnnlab.train",
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *tiny,
         "+callbacks.fault._target_=killpoints.Fault", "+callbacks.fault.action=raise",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=killable_env(""),
    )  # fmt: skip
    assert run.returncode == 1, "a sweep with a failed job exits 1"
    assert (sweep / ".submitit").is_dir()
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "failed"
    assert "a bug in the job's code" in run.stderr
    status = run_cli("cnnlab.status", str(sweep))
    assert "1 failed" in status.stdout, status.stdout
    bad = run_cli("cnnlab.train", "-m", "hydra/launcher=submitit_local", "model=nope")
    assert bad.returncode == 2, "a config error before any job exits 2"
