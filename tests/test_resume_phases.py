"""Exact resume whatever moment a SIGKILL hits: one killed run per phase boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, train_in_process

# 64 training images in batches of 8: 8 steps an epoch, 3 epochs. The step checkpoint every 4
# steps falls on each epoch's last batch too (the case Lightning would skip validation for).
# Dropout draws random numbers, so a resume that replays the wrong RNG state shows.
TINY_RESUMABLE = [
    "data=synthetic",
    "data.num_train=80",
    "data.val_split=16",
    "data.num_test=32",
    "data.batch_size=8",
    "model.channels=[4,8]",
    "model.hidden=[16]",
    "model.dropout=0.3",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "callbacks.last_every_n_steps.every_n_train_steps=4",
    "callbacks.progress_bar=null",
    "logger=none",
    "torch_threads=1",
    "+callbacks.kill._target_=killpoints.KillAt",
]
COMPARED = (
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "best_epoch",
    "epochs",
    "global_step",
    "test/acc",
    "test/loss",
)
PHASES = [
    "train_batch:0:5",  # mid-epoch, after the step-4 checkpoint
    "val_start:0",  # after the last batch of epoch 0 (a step-checkpoint step)
    "val_batch:0",  # during epoch 0's validation
    "val_end:0",  # validation done, its checkpoint not yet written
    "ckpt_write:2",  # while writing epoch 0's best.ckpt
    "ckpt_write:3",  # while writing epoch 0's last.ckpt
    "epoch_end:0",  # after the epoch's checkpoints
    "train_batch:1:3",  # mid-epoch 1, on a step-checkpoint step before it is written
    "val_batch:2",  # during the last epoch's validation
    "fit_end",  # training done, not yet tested
    "test",  # during the test
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("reference") / "run"
    return train_in_process(TINY_RESUMABLE, out), out


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["state_dict"]


@pytest.mark.parametrize("phase", PHASES)
def test_a_run_killed_at_any_phase_resumes_to_the_uninterrupted_result(
    phase: str, reference: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    expected, reference_dir = reference
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "CNNLAB_TEST_KILL_AT": phase,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
    }
    killed = subprocess.run(
        [sys.executable, "-m", "cnnlab.train", *TINY_RESUMABLE, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, f"never reached {phase}: {killed.stderr[-2000:]}"

    resumed = train_in_process([*TINY_RESUMABLE, "resume=true"], run_dir)
    assert resumed["status"] == "completed"
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    for name in ("last.ckpt", "best.ckpt"):
        ours, theirs = _weights(run_dir, name), _weights(reference_dir, name)
        assert ours.keys() == theirs.keys()
        assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == [], name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ], "no temp file of an interrupted write is left"
