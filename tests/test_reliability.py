"""Crash safety, exact resume, contained failures, safe checkpoints and early errors."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.checkpoint import read_checkpoint
from cnnlab.errors import CheckpointError
from forkrun import run_module, start_module
from killpoints import killable_env

from conftest import ROOT, run_cli, train_in_process

# Deterministic digits run with dropout and augmentation (both draw random numbers), small
# batches so that a run lasts long enough to be killed, and last.ckpt every 25 steps.
RESUMABLE = [
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "data.batch_size=8",
    "model.dropout=0.2",
    "data/augment=flip_crop",
    "data.augment.crop_padding=1",
    "callbacks.last_every_n_steps.every_n_train_steps=25",
    "callbacks.progress_bar=null",
    "torch_threads=1",
]


def _global_step(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = train_in_process(RESUMABLE, tmp_path / "reference")

    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start_module("cnnlab.train", [*RESUMABLE, f"hydra.run.dir={run_dir}"], ROOT, env)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while _global_step(last) < 100 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _global_step(last)
    assert 100 <= killed_at < reference["global_step"]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"

    resumed = train_in_process([*RESUMABLE, "resume=true"], run_dir)
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/acc",
        "global_step",
        "best_epoch",
    ):
        assert resumed[key] == reference[key], key
    a = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_checkpoints_are_written_atomically(tmp_path: Path) -> None:
    from cnnlab.checkpoint import AtomicCheckpointIO

    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)

    class Explodes:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "x": Explodes()}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}, "the old file is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temp file left"


def test_resume_true_skips_completed_jobs_of_a_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        # job 1 fails once its data is read: no batch of 4096 images, drop_last drops the rest
        "data.batch_size=32,4096",
        "data.drop_last=true",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_cli("cnnlab.train", *args)
    assert first.returncode != 0
    done = json.loads((sweep / "0" / "metrics.json").read_text())
    assert done["status"] == "completed"
    again = run_cli("cnnlab.train", *args, "resume=true")
    assert again.returncode != 0, "the failing job still fails"
    assert json.loads((sweep / "0" / "metrics.json").read_text()) == done, "completed job skipped"
    assert "already completed (resume=true): skipping it" in again.stdout + again.stderr
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "failed"


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    # The learning rate is multiplied by 1e30 after the first epoch: the loss diverges in epoch 1.
    run = run_cli(
        "cnnlab.train",
        "trainer.max_epochs=3",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=1e30",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={out}",
    )
    assert run.returncode == 1
    assert "cnnlab: error:" in run.stderr and "Traceback" not in run.stderr
    assert "step" in run.stderr and (
        "NaN" in run.stderr or "nan" in run.stderr or "inf" in run.stderr
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "NonFiniteLossError" in metrics["error"]
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


@pytest.mark.parametrize(("accumulate", "step"), [(1, 4), (3, 2)])
def test_a_non_finite_loss_is_named_at_its_optimizer_step(
    accumulate: int, step: int, tmp_path: Path
) -> None:
    # batch 3's loss is the first NaN: optimizer step 4, or 2 when each step takes 3 batches
    run = run_module(
        "cnnlab.train",
        ["data=synthetic", "data.num_train=96", "data.num_test=32", "data.batch_size=8",
         "model.hidden=[16]", "model.channels=[4,8]", "trainer.max_epochs=1",
         f"trainer.accumulate_grad_batches={accumulate}", "callbacks.progress_bar=null",
         "+callbacks.poison._target_=killpoints.PoisonAfter", "+callbacks.poison.batch=2",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=killable_env(""), timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"Training loss became nan at step {step} (epoch 0)." in run.stderr, run.stderr[-2000:]


def test_a_monitor_that_is_never_logged_fails_after_the_first_validation(tmp_path: Path) -> None:
    out = tmp_path / "monitor"
    run = run_cli(
        "cnnlab.train",
        "monitor=val/accuracy",
        "trainer.max_epochs=50",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={out}",
    )
    assert run.returncode == 2
    assert "val/accuracy" in run.stderr and "Traceback" not in run.stderr
    ckpts = list((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").exists() else []
    assert not any(_global_step(c) > 36 for c in ckpts), "stopped in the first epoch"
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


def test_a_checkpoint_for_another_model_is_refused_with_the_mismatched_keys(tmp_path: Path) -> None:
    train_in_process(["trainer.max_epochs=1"], tmp_path / "small")
    ckpt = tmp_path / "small" / "checkpoints" / "last.ckpt"
    run = run_cli(
        "cnnlab.train",
        f"ckpt_path={ckpt}",
        "model.channels=[8,16]",
        f"hydra.run.dir={tmp_path / 'other'}",
    )
    assert run.returncode == 2
    assert "does not match the model config" in run.stderr
    assert "model.features.0.weight (32, 1, 3, 3) vs (8, 1, 3, 3)" in run.stderr
    assert not (tmp_path / "other" / "checkpoints").exists()


class _CreatesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_whose_pickle_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _CreatesAFile(marker)}, evil)
    with pytest.raises(CheckpointError, match="could run arbitrary code"):
        read_checkpoint(evil)
    for module, args in (
        ("cnnlab.eval", [f"ckpt_path={evil}"]),
        ("cnnlab.train", [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}"]),
    ):
        run = run_cli(module, *args)
        assert run.returncode == 2 and "Refused to load" in run.stderr
    assert not marker.exists(), "the pickle's code must never run"
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        (tmp_path / "cut.ckpt").write_bytes(evil.read_bytes()[:100])
        read_checkpoint(tmp_path / "cut.ckpt")
    assert pickle  # the crafted file above is a real pickle payload


def test_two_runs_started_together_get_their_own_directories(tmp_path: Path) -> None:
    args = ["+trainer.fast_dev_run=true", "callbacks.progress_bar=null"]
    procs = [start_module("cnnlab.train", args, tmp_path) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 2
    assert all((r / "metrics.json").is_file() for r in runs)


def test_an_existing_run_directory_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train_in_process(["trainer.max_epochs=1"], out)
    before = (out / "metrics.json").read_bytes()
    run = run_cli("cnnlab.train", "trainer.max_epochs=1", f"hydra.run.dir={out}")
    assert run.returncode == 2 and "never overwrites" in run.stderr
    assert (out / "metrics.json").read_bytes() == before
    assert first["status"] == "completed"


def test_an_output_directory_that_cannot_be_written_fails_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    run = run_cli("cnnlab.train", f"hydra.run.dir={blocker / 'run'}")
    assert run.returncode == 2
    assert str(blocker) in run.stderr
    full = run_cli("cnnlab.train", "paths.min_free_mb=1e12", f"hydra.run.dir={tmp_path / 'r'}")
    assert full.returncode == 2
    assert "MB are free under" in full.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_directory_in_use_by_another_run_is_refused(tmp_path: Path) -> None:
    from cnnlab.errors import RunExistsError
    from cnnlab.rundir import run_dir_lock

    with run_dir_lock(tmp_path):
        run = run_cli("cnnlab.train", f"hydra.run.dir={tmp_path}", "resume=true")
        assert run.returncode == 2 and "Another process is training in" in run.stderr
        with pytest.raises(RunExistsError):
            run_dir_lock(tmp_path).__enter__()
    assert not (tmp_path / "metrics.json").exists()


def test_a_run_stopped_by_max_time_is_not_completed_and_resume_finishes_it(
    run_dir: Path,
) -> None:
    base = ["trainer.max_epochs=20", "logger=none"]
    stopped = train_in_process([*base, "+trainer.max_time=00:00:00:01"], run_dir)
    assert stopped["status"] == "time_limit" and "resume=true" in stopped["error"]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "time_limit"
    # A run recorded by an earlier cnnlab lacks the keys added since: they are not a change.
    record = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(record)
    for added in ("eval_norm", "eval_dropout", "eval_translate_tta"):
        config.module.pop(added)
    config.trainer.pop("max_steps")
    # nor is the published figure the report compares with (it changes no computation)
    config.expected = {"value": 0.5, "as_published": ["module.eval_norm=batch"]}
    OmegaConf.save(config, record)
    finished = train_in_process([*base, "+trainer.max_time=null", "resume=true"], run_dir)
    assert finished["status"] == "completed" and finished["epochs"] == 20
    assert stopped["global_step"] < finished["global_step"]
    steps_per_epoch = finished["global_step"] // 20
    assert stopped["global_step"] % steps_per_epoch == 0, "stopped at the end of an epoch"
