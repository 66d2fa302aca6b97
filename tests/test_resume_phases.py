"""Exact resume whatever moment a SIGKILL hits: one killed run per phase boundary."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from forkrun import run_module
from killpoints import TINY_RESUMABLE, killable_env

from conftest import ROOT, train_in_process

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


@pytest.fixture(scope="session")
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
    env = killable_env(phase)
    killed = run_module(
        "cnnlab.train",
        [*TINY_RESUMABLE, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
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


# 20 steps stop mid-epoch 2 of 5: the limit, not max_epochs, ends the fit.
LIMITED = [*TINY_RESUMABLE, "trainer.max_steps=20", "trainer.max_epochs=5"]


@pytest.fixture(scope="module")
def limited_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return train_in_process(LIMITED, tmp_path_factory.mktemp("limited") / "run")


@pytest.mark.parametrize(
    "phase",
    [
        # only epoch 0's end-of-epoch last.ckpt: Lightning's own max_steps reran that epoch's
        # end on resume (NaN loss on emptied metrics, a failed run)
        "train_batch:1:3",
        "val_start:2",  # the stop step is a step-checkpoint step: validation still to come
        "test",  # training done: a resume trains no further batch
    ],
)
def test_a_run_limited_by_max_steps_resumes_to_the_uninterrupted_result(
    phase: str, limited_reference: dict[str, Any], tmp_path: Path
) -> None:
    assert limited_reference["status"] == "completed"
    assert limited_reference["global_step"] == 20 and limited_reference["epochs"] == 3
    run_dir = tmp_path / "run"
    killed = run_module("cnnlab.train", [*LIMITED, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                        env=killable_env(phase), timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = train_in_process([*LIMITED, "resume=true"], run_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: limited_reference[k] for k in COMPARED}


@pytest.mark.parametrize(
    ("signame", "phase", "stopped_at"),
    # KillAt signals after GracefulStop looked at the batch: the next batch ends the run.
    [("SIGTERM", "train_batch:1:2", 12), ("SIGINT", "val_batch:0", 8)],
)
def test_sigterm_and_sigint_stop_the_run_resumably(
    signame: str,
    phase: str,
    stopped_at: int,
    reference: tuple[dict[str, Any], Path],
    tmp_path: Path,
) -> None:
    import json
    import socket

    expected, _ = reference
    run_dir = tmp_path / "run"
    stopped = run_module(
        "cnnlab.train",
        [*TINY_RESUMABLE, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=killable_env(phase, signame),
        timeout=600,
    )
    assert stopped.returncode == 128 + getattr(signal, signame), stopped.stderr[-2000:]
    messages = [line for line in stopped.stderr.splitlines() if line.startswith("cnnlab:")]
    assert len(messages) == 1 and signame in messages[0] and "resume=true" in messages[0]
    assert "Traceback" not in stopped.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == signame
    assert record["global_step"] == stopped_at
    assert record["hostname"] == socket.gethostname() and record["pid"] > 0
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == stopped_at, "the checkpoint holds the step it stopped at"
    assert last["callbacks"]["GracefulStop"]["wall_time_s"] > 0
    # The wall time of the calls before the checkpoint counts in the resumed run's record.
    last["callbacks"]["GracefulStop"]["wall_time_s"] = 1e6
    torch.save(last, run_dir / "checkpoints" / "last.ckpt")

    resumed = train_in_process([*TINY_RESUMABLE, "resume=true"], run_dir)
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert resumed["wall_time_s"] > 1e6


@pytest.mark.slow
def test_a_signal_to_one_ddp_rank_stops_every_rank_resumably(tmp_path: Path) -> None:
    """``kill`` may reach one rank only (Slurm signals them all): the ranks agree, write the
    checkpoint together, stop at the same step, and resume to the uninterrupted result."""
    import json

    from cnnlab.eval import evaluate

    ddp = [*TINY_RESUMABLE, "trainer=ddp", "trainer.devices=2"]  # 4 steps an epoch per rank

    def train(run_dir: Path, *extra: str, **env: str) -> Any:
        args = [*ddp, *extra, f"hydra.run.dir={run_dir}"]
        return run_module("cnnlab.train", args, ROOT, {**killable_env(""), **env}, timeout=300)

    reference = train(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    # The uninterrupted run: one run directory and one set of checkpoints, and metrics synced
    # across ranks (their halves of the validation set add up to one process's measure).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference"]
    checkpoints = tmp_path / "reference" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    single = evaluate([f"ckpt_path={checkpoints / 'best.ckpt'}", "split=val"])
    theirs = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert single["metrics"]["val/acc"] == pytest.approx(theirs["val/acc_best"], abs=1e-6)
    run_dir = tmp_path / "run"
    signalled = {"CNNLAB_TEST_SIGNAL": "SIGTERM", "CNNLAB_TEST_KILL_RANK": "1"}
    stopped = train(run_dir, CNNLAB_TEST_KILL_AT="train_batch:1:2", **signalled)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    messages = [line for line in stopped.stderr.splitlines() if line.startswith("cnnlab:")]
    assert len(messages) == 1 and "SIGTERM at step 8" in messages[0], messages
    record = json.loads((run_dir / "metrics.json").read_text())
    # epoch 1's last batch ran, its epoch checkpoint was written, epoch 2 never started
    assert record["status"] == "interrupted" and record["global_step"] == 8
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8

    resumed = train(run_dir, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours = json.loads((run_dir / "metrics.json").read_text())
    assert ours["status"] == "completed"
    assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}


def test_ranks_act_on_the_agreed_answer_only() -> None:
    """A signal that lands on one rank after the ranks agreed waits for the next safe point."""
    from types import SimpleNamespace

    from cnnlab import interrupts

    def trainer(anyone: bool) -> SimpleNamespace:
        strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: anyone)
        return SimpleNamespace(world_size=2, strategy=strategy)

    try:
        interrupts._Pending.signum = signal.SIGINT  # arrived after the reduction
        assert interrupts._agreed_signal(trainer(anyone=False)) is None
        assert interrupts._agreed_signal(trainer(anyone=True)) == signal.SIGINT
        interrupts._Pending.signum = None  # another rank was signalled
        assert interrupts._agreed_signal(trainer(anyone=True)) == signal.SIGTERM
        assert interrupts._Pending.signum == signal.SIGTERM
    finally:
        interrupts._Pending.signum = None
