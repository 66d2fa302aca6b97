"""Run-directory ownership, config records, exit codes and one-line errors (issue 13)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import lightning as L
import pytest
import torch

from cnnlab.checkpoint import read_checkpoint
from cnnlab.errors import CheckpointError, NonFiniteLossError
from cnnlab.rundir import atomic_write, remove_temp_files, run_dir_lock
from forkrun import run_module
from killpoints import TINY_RESUMABLE, killable_env

from conftest import ROOT, run_cli, train_in_process

QUICK = [o for o in TINY_RESUMABLE if not o.startswith("trainer.max_epochs")]
QUICK += ["trainer.max_epochs=1"]


def _cli(*args: str, phase: str = "", how: str = "SIGKILL") -> subprocess.CompletedProcess:
    """``python -m cnnlab.train args`` able to import the test callback of QUICK."""
    return run_module(
        "cnnlab.train",
        [*args],
        cwd=ROOT,
        env=killable_env(phase, how),
        timeout=600,
    )


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_a_refused_command_leaves_the_run_directory_byte_for_byte_unchanged(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    train_in_process(QUICK, run_dir)
    record = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "trainer.max_epochs=1" in record and (run_dir / ".hydra" / "config.yaml").is_file()
    (run_dir / ".lock").unlink()  # a run copied from elsewhere has no lock file
    before = _snapshot(run_dir)
    target = f"hydra.run.dir={run_dir}"

    again = _cli(*QUICK, "optimizer.lr=0.5", target)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    changed = _cli(*QUICK, "optimizer.lr=0.5", "resume=true", target)
    assert changed.returncode == 2
    assert "optimizer.lr: 0.001 -> 0.5" in changed.stderr, changed.stderr[-2000:]
    typo = _cli(*QUICK, "optimizer.lr=-1", "resume=true", target)
    assert typo.returncode == 2 and "optimizer.lr=-1" in typo.stderr
    # execution-only keys may differ: the completed run is skipped, nothing is written
    same = _cli(*QUICK, "torch_threads=2", "resume=true", target)
    assert same.returncode == 0 and "already completed" in same.stdout + same.stderr
    with run_dir_lock(run_dir, keep=lambda: False):  # another process holds it
        busy = _cli(*QUICK, "optimizer.lr=-1", "resume=true", target)
    assert busy.returncode == 2 and "Another process is training" in busy.stderr
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=${nope.nope}", "optimizer.lr='${nope.nope}' cannot be resolved"),
        ("seed=-1", "seed=-1 is not valid"),
        ("seed=4294967296", "seed=4294967296 is not valid"),
        ("optimizer.lr=inf", "optimizer.lr=inf is not valid"),
        ("trainer.gradient_clip_val=nan", "trainer.gradient_clip_val=nan is not valid"),
        ("data.batch_size=0", "data.batch_size=0 is not valid"),
    ],
)
def test_a_bad_value_is_one_line_exit_2_and_creates_no_run_directory(
    override: str, message: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run = _cli(*QUICK, override, f"hydra.run.dir={run_dir}")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not run_dir.exists(), "a typo leaves no run directory behind"


def test_resume_of_a_directory_holding_no_run_and_repeated_keys(tmp_path: Path) -> None:
    run = run_cli(
        "cnnlab.train", *QUICK, "seed=1", "seed=2", "resume=true", f"hydra.run.dir={tmp_path}"
    )
    assert run.returncode == 2 and "holds no run to resume" in run.stderr
    assert "seed is given 2 times (1, 2); the last one, 2, is used" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_over_long_output_and_data_paths_are_one_line_exit_2(tmp_path: Path) -> None:
    run = _cli(*QUICK, f"hydra.run.dir={tmp_path / ('x' * 300)}")
    assert run.returncode == 2
    assert "file name too long" in run.stderr.lower() and "Traceback" not in run.stderr
    run_dir = tmp_path / "run"
    long_data = f"paths.data_dir={tmp_path / ('d' * 300)}"
    data = _cli("data=mnist", long_data, f"hydra.run.dir={run_dir}")
    assert data.returncode == 2
    assert "file name too long" in data.stderr.lower() and "Traceback" not in data.stderr
    assert not run_dir.exists(), "nothing started: nothing left behind"


def test_a_full_disk_during_a_checkpoint_write_names_the_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    full = _cli(*QUICK, f"hydra.run.dir={run_dir}", phase="ckpt_write:1", how="ENOSPC")
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert "no space left on device" in full.stderr
    assert str(run_dir / "checkpoints" / "last.ckpt") in full.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


@contextmanager
def _small_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``tmp_path/disk``: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root; the CI runs as root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# Checkpoints of ~0.4 MB (weights and Adam's moments): best.ckpt and last.ckpt of epoch 0 fit
# the 1 MB disk, the second epoch's atomic write (a third copy until the rename) does not.
BIG_CHECKPOINTS = [
    *(o for o in QUICK if not o.startswith(("model.hidden", "trainer.max_epochs", "+callbacks"))),
    "model.hidden=[256]",
    "trainer.max_epochs=2",
    "callbacks.last_every_n_steps.every_n_train_steps=1000",
    "paths.min_free_mb=0",
]


def test_a_really_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    with _small_disk(tmp_path, "1000k") as disk:
        run_dir = disk / "run"
        full = run_cli("cnnlab.train", *BIG_CHECKPOINTS, f"hydra.run.dir={run_dir}")
        assert full.returncode == 1, full.stderr[-2000:]
        errors = [line for line in full.stderr.splitlines() if "rror" in line]
        prefix = f"cnnlab: error: no space left on device: {run_dir / 'checkpoints'}/"
        assert len(errors) == 1 and errors[0].startswith(prefix), full.stderr[-2000:]
        assert "Traceback" not in full.stderr and "inline_container" not in full.stderr
        assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
        failed = Path(errors[0].removeprefix("cnnlab: error: no space left on device: "))
        assert read_checkpoint(failed)["global_step"] == 8, "epoch 0's checkpoint is kept"
        for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
            read_checkpoint(ckpt)  # nothing half-written
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "failed" and "No space left on device" in record["error"]


def test_a_failed_write_without_an_oserror_on_a_full_disk_is_enospc(tmp_path: Path) -> None:
    """torch's own file writer (a path, not a file object) reports only a C++ message."""
    with _small_disk(tmp_path, "64k") as disk:
        target = disk / "last.ckpt"
        target.write_bytes(b"the previous good checkpoint")

        def fill_then_fail(f: object) -> None:
            with (disk / "filler").open("wb", buffering=0) as filler, suppress(OSError):
                while filler.write(b"0" * 4096):
                    pass
            _fail(f)

        with pytest.raises(OSError) as err:
            atomic_write(target, fill_then_fail)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
        assert target.read_bytes() == b"the previous good checkpoint"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "last.ckpt"]
        (disk / "filler").unlink()
        with pytest.raises(RuntimeError, match="unexpected pos"):  # not full: not guessed
            atomic_write(target, _fail)


def _fail(f: object) -> None:
    raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 9 vs 8")


NO_STEP = "fewer than data.batch_size={}, and data.drop_last=true drops that incomplete batch"


def test_a_run_that_would_take_no_optimizer_step_is_refused_before_training(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    digits = run_cli(
        "cnnlab.train",
        "trainer.max_epochs=1",
        "data.batch_size=2048",
        "data.drop_last=true",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    assert digits.returncode == 2, digits.stderr[-2000:]
    assert "The training split has 1150 images, " + NO_STEP.format(2048) in digits.stderr
    assert "Use data.batch_size=1150 or smaller, or data.drop_last=false." in digits.stderr
    assert "Traceback" not in digits.stderr and "No optimizer step" not in digits.stderr
    assert not run_dir.exists(), "nothing trained: no run directory left behind"

    # In a sweep the job fails like other errors found at data set-up (the data are not read
    # before the jobs start): recorded as failed, and the other jobs run.
    sweep = tmp_path / "sweep"
    quick = [o for o in QUICK if not o.startswith(("+callbacks", "data.batch_size"))]
    swept = run_cli(
        "cnnlab.train", "-m", *quick, "data.drop_last=true", "data.batch_size=8,512",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert swept.returncode == 1, swept.stderr[-2000:]
    assert f"Sweep {sweep}: 1 completed, 1 failed." in swept.stdout
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and NO_STEP.format(512) in failed["error"]
    assert not (sweep / "1" / "checkpoints").exists()


def test_a_resumed_sweep_with_other_values_is_refused_and_an_interrupted_one_finishes(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *QUICK, "seed=1,2,3", f"hydra.sweep.dir={sweep}"]
    stopped = _cli(*args, phase="train_batch:0:2", how="SIGTERM")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "the jobs after it did not run" in stopped.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists()
    before = _snapshot(sweep)

    other = _cli(*args[:-2], "seed=4,5,6", args[-1], "resume=true")
    assert other.returncode == 2 and "seed: '1,2,3' -> '4,5,6'" in other.stderr
    fresh = _cli(*args)
    assert fresh.returncode == 2 and "already holds a sweep" in fresh.stderr
    assert _snapshot(sweep) == before

    finished = _cli(*args, "resume=true")
    assert finished.returncode == 0, finished.stderr[-2000:]
    statuses = [json.loads((sweep / j / "metrics.json").read_text())["status"] for j in "012"]
    assert statuses == ["completed"] * 3


def test_one_exit_code_rule_for_failed_sweep_jobs(tmp_path: Path) -> None:
    # one loky worker: the rule does not depend on how many there are, and each costs seconds
    for launcher in ([], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"]):
        sweep = tmp_path / f"sweep{len(launcher)}"
        fault = ["+callbacks.fault._target_=killpoints.Fault", "+callbacks.fault.action=none,raise"]
        run = run_module(
            "cnnlab.train",
            ["-m", *QUICK, *launcher, *fault, f"hydra.sweep.dir={sweep}"],
            cwd=ROOT,
            env=killable_env(""),
        )
        assert run.returncode == 1, (launcher, run.stderr[-2000:])
        assert "a bug in the job's code" in run.stderr


def test_eval_and_summary_help_and_missing_checkpoint_are_one_line(tmp_path: Path) -> None:
    for module in ("cnnlab.eval", "cnnlab.summary"):
        helped = run_cli(module, "--help")
        assert helped.returncode == 0 and "python -m cnnlab." in helped.stdout
    missing = run_cli("cnnlab.eval")
    assert missing.returncode == 2 and "ckpt_path" in missing.stderr
    assert "Traceback" not in missing.stderr
    folder = run_cli("cnnlab.eval", f"ckpt_path={tmp_path}")
    assert folder.returncode == 2 and "is a directory" in folder.stderr


def test_temp_files_of_a_killed_atomic_write_are_removed(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".metrics.json.abc.tmp", tmp_path / "checkpoints" / ".last.ckpt.x.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"user file")
    assert sorted(remove_temp_files(tmp_path)) == sorted(stale)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.tmp"]


class PoisonWeights(L.Callback):
    """Makes the weights NaN after the third optimizer step: step 4's loss is NaN."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == 3:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def test_a_nan_loss_is_named_at_the_step_it_appears(tmp_path: Path) -> None:
    poison = "+callbacks.poison._target_=test_reliability_lifecycle.PoisonWeights"
    with pytest.raises(NonFiniteLossError, match=r"Training loss became nan at step 4 \(epoch 0\)"):
        train_in_process([*QUICK, "trainer.log_every_n_steps=50", poison], tmp_path / "run")


def test_a_corrupt_last_checkpoint_does_not_advise_using_last_ckpt(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, last)
    last.write_bytes(last.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(last)
    assert "best.ckpt" in str(err.value) and "last.ckpt or" not in str(err.value)
