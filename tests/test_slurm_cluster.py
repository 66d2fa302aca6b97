"""hydra/launcher=slurm against a real one-node Slurm (scripts/slurm_cluster.sh starts it).

Needs root and Debian's packages (installed by the script when missing); skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from forkrun import ForkedRun, run_module, start_module
from killpoints import killable_env

from conftest import ROOT, run_cli

# One xdist worker runs every test that uses the cluster (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")

TINY = [
    "data=synthetic",
    "data.num_train=96",
    "data.num_test=32",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
    "model.hidden=[16]",
    "model.channels=[4,8]",
    "hydra/launcher=slurm",
]
# 3 epochs of 10 steps; a fresh job holds after epoch 0's last.ckpt until it is signalled
# (tests/killpoints.py), the reference and resumed runs go through.
LONG = [
    *TINY,
    "data.num_train=200",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "torch_threads=1",
    "+callbacks.kill._target_=killpoints.KillAt",
]
HOLD = killable_env("train_batch:1:0", "HOLD")
METRICS = ("train/loss", "val/loss", "val/acc", "val/acc_best", "test/acc", "global_step")


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _submit(*args: str) -> ForkedRun:
    """A Slurm sweep whose jobs hold (``HOLD``) after their first last.ckpt."""
    env = {**HOLD, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return start_module("cnnlab.train", ["-m", *args], cwd=ROOT, env=env)


def _wait_for_checkpoint(sweep: Path, proc: ForkedRun, num: int) -> str:
    """The Slurm job id of job ``num`` once it has written its first last.ckpt."""
    last = sweep / str(num) / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and (sweep / "jobs.json").is_file():
            return json.loads((sweep / "jobs.json").read_text())["jobs"][str(num)]["job_id"]
        time.sleep(0.2)
    pytest.fail(f"no last.ckpt in time; submitter output:\n{''.join(proc.output())[-3000:]}")


def test_array_sweep_with_a_failing_job(slurm_cluster: None, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # batches of 4096 with drop_last: job 1 finds it would take no step once its data is read
    failing = ["data.batch_size=16,4096", "data.drop_last=true"]
    run = run_cli("cnnlab.train", "-m", *TINY, *failing, f"hydra.sweep.dir={sweep}")
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-3000:]
    assert "the run would take no optimizer step" in run.stderr
    jobs = json.loads((sweep / "jobs.json").read_text())["jobs"]
    array_ids = {job["job_id"].split("_")[0] for job in jobs.values()}
    assert len(array_ids) == 1 and sorted(jobs) == ["0", "1"], jobs
    assert [_metrics(sweep / n)["status"] for n in "01"] == ["completed", "failed"]
    env = json.loads((sweep / "0" / "environment.json").read_text())
    assert env["slurm"]["job_id"] == jobs["0"]["job_id"] and env["slurm"]["array_task_id"] == 0
    assert env["slurm"]["node"] and env["cpu_threads"] == 1  # cpus_per_task=1 by default
    assert "-m cnnlab.train -m" in env["command"] and "_submit" not in env["command"]
    assert env["git_commit"]
    assert (sweep / "0" / "slurm.out").resolve() == Path(jobs["0"]["stdout"]).resolve()
    status = run_cli("cnnlab.status", str(sweep))
    assert status.returncode == 0, status.stderr
    assert "1 completed, 1 failed" in status.stdout and jobs["1"]["job_id"] in status.stdout
    # resume=true submitting only the unfinished jobs: the preemption test below


def test_a_preempted_job_is_requeued_and_a_cancelled_one_resumes_with_resume_true(
    slurm_cluster: None, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    args = [*LONG, "seed=1,2", f"hydra.sweep.dir={sweep}"]
    proc = _submit(*args)
    preempted, cancelled = (_wait_for_checkpoint(sweep, proc, num) for num in (0, 1))
    assert torch.load(sweep / "0/checkpoints/last.ckpt", weights_only=True)["global_step"] > 0
    # What submitit sends a preempted job (submitit.slurm.SlurmJob._interrupt)
    subprocess.run(["scancel", preempted, "--signal", "SIGTERM"], check=True)
    subprocess.run(["scancel", preempted, "--signal", "USR2"], check=True)
    subprocess.run(["scancel", cancelled], check=True)
    single = [a for a in LONG if not a.startswith("hydra/launcher")]
    reference = run_module(
        "cnnlab.train",
        [*single, "seed=1", f"hydra.run.dir={tmp_path / 'ref'}"],
        cwd=ROOT,
        env={**HOLD, "CNNLAB_TEST_KILL_AT": ""},  # KillAt present, inert
    )
    code, out = proc.wait(timeout=300), "".join(proc.output())
    assert reference.returncode == 0, reference.stderr[-3000:]

    # The preempted job resumed from last.ckpt and ended as if never stopped.
    resumed, uninterrupted = _metrics(sweep / "0"), _metrics(tmp_path / "ref")
    assert resumed["status"] == "completed"
    for key in METRICS:
        assert resumed[key] == uninterrupted[key], key
    assert json.loads((sweep / "0" / "environment.json").read_text())["slurm"]["restart_count"] == 1
    log = (sweep / "0" / "train.log").read_text()
    # cnnlab's handler requeues it, or submitit's own USR2 handler when the signals come first
    assert "stopped and requeued; it resumes from last.ckpt" in log or "Requeued job" in log
    assert "Resuming from" in log

    # The cancelled one failed the sweep, and resume=true finishes it (and only it).
    assert code == 1, out[-3000:]
    assert f"Slurm job {cancelled} failed without a result (state CANCELLED" in out
    assert _metrics(sweep / "1")["status"] != "completed"
    again = _submit(*args, "resume=true")
    assert again.wait(timeout=300) == 0, "".join(again.output())[-3000:]
    assert "".join(again.output()).count("(resume=true): not submitted") == 1
    metrics = _metrics(sweep / "1")
    assert metrics["status"] == "completed" and metrics["epochs"] == 3
    assert "Resuming from" in (sweep / "1" / "train.log").read_text()


def test_ddp_with_two_tasks_in_one_job(slurm_cluster: None, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    run = run_cli("cnnlab.train", "-m", *args, f"hydra.sweep.dir={sweep}")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = _metrics(sweep / "0")
    # 96 images minus a 20% validation split = 77, 38 per rank, batches of 16: 3 steps each.
    assert metrics["status"] == "completed" and metrics["global_step"] == 3
    env = json.loads((sweep / "0" / "environment.json").read_text())
    assert env["slurm"]["ntasks"] == 2  # tasks_per_node derived from trainer.devices
    assert (sweep / "0" / "train.rank1.log").is_file()
    assert "rank: 1" not in (sweep / "0" / "train.log").read_text().lower()


def test_detached_sweep_is_followed_with_status_and_report(
    slurm_cluster: None, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli(
        "cnnlab.train", "-m", *TINY, f"hydra.sweep.dir={sweep}", "hydra.launcher.detach=true"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"python -m cnnlab.status {sweep}" in run.stdout
    deadline = time.time() + 240
    status = run_cli("cnnlab.status", str(sweep))
    while "1 completed" not in status.stdout and time.time() < deadline:
        time.sleep(2)
        status = run_cli("cnnlab.status", str(sweep))
    assert "1 completed" in status.stdout, status.stdout + status.stderr
    report = run_cli("cnnlab.report", str(sweep))
    assert report.returncode == 0, report.stderr[-2000:]


def test_an_optuna_search_runs_its_trials_as_slurm_jobs(
    slurm_cluster: None, tmp_path: Path
) -> None:
    import optuna
    from optuna.trial import TrialState

    from cnnlab.optuna_sweeper import open_storage

    sweep = tmp_path / "search"
    run = run_cli(
        "cnnlab.train",
        *TINY,
        "hparams_search=optuna",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",  # both trials of the batch in one job array
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    study = optuna.load_study(
        study_name="cnnlab", storage=open_storage(str(sweep / "optuna.journal"))
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    jobs = json.loads((sweep / "jobs.json").read_text())["jobs"]
    assert len({job["job_id"].split("_")[0] for job in jobs.values()}) == 1, jobs
    for trial in study.trials:
        run_dir = sweep / str(trial.number)
        assert _metrics(run_dir)["val/acc_best"] == pytest.approx(trial.value)
        assert json.loads((run_dir / "environment.json").read_text())["slurm"]["job_id"]
    best = yaml.safe_load((sweep / "optuna_study.yaml").read_text())["best"]
    assert best["value"] == pytest.approx(max(t.value for t in study.trials))
