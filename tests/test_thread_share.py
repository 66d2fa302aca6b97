"""Cores handed on between runs side by side: the launcher's shares and the run's switch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import thread_share
from cnnlab.thread_share import (
    SHARE_ENV,
    FollowThreadShare,
    ThreadShares,
    follow_callbacks,
    run_side_by_side,
)


def _counts(fd: int) -> list[int]:
    """The thread counts written into the pipe ``fd`` so far and not yet read."""
    os.set_blocking(fd, False)
    try:
        return [int(c) for c in os.read(fd, 4096).split()]
    except BlockingIOError:
        return []


def test_the_running_runs_split_the_cores_only_once_none_is_left_to_start() -> None:
    with ThreadShares(cores=3) as shares:
        reads = {key: shares.start(key, 1)[0] for key in "abc"}
        shares.end("a", spread=False)  # another run takes its place
        assert _counts(reads["b"]) == _counts(reads["c"]) == []
        assert os.read(reads["a"], 16) == b""  # its pipe is closed
        shares.end("b", spread=True)
        assert _counts(reads["c"]) == [3]
        reads["d"] = shares.start("d", 1)[0]
        shares.end("c", spread=True)
        assert _counts(reads["d"]) == [3]
    assert os.read(reads["d"], 16) == b""  # closing the shares closes every pipe
    with ThreadShares(cores=3) as shares:  # 3 cores over 2 runs: the first takes the remainder
        reads = {key: shares.start(key, 1)[0] for key in "abc"}
        shares.end("c", spread=True)
        assert [_counts(reads[k]) for k in "ab"] == [[2], []]  # b keeps its 1 thread
    for fd in [*reads.values()]:
        os.close(fd)


def test_a_run_takes_the_last_thread_count_its_launcher_wrote() -> None:
    before = torch.get_num_threads()
    read, write = os.pipe()
    follow = FollowThreadShare(read)
    try:
        follow.on_train_batch_start(None)  # nothing written yet: the threads stay
        assert torch.get_num_threads() == before
        os.write(write, b"2\n1\n")
        follow.on_train_batch_start(None)  # before every training batch
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        follow.on_validation_start(None, None)  # nothing new since: nothing changes
        assert torch.get_num_threads() == 2
        os.write(write, b"x\n")
        follow.on_test_start(None, None)
        assert torch.get_num_threads() == 2
        os.close(write)  # the launcher has gone: the threads stay, the pipe is let go
        follow.follow()
        assert torch.get_num_threads() == 2 and follow.fd is None
    finally:
        torch.set_num_threads(before)
        os.close(read)


def test_a_run_follows_a_share_only_from_its_own_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read, write = os.pipe()
    regular = os.open(tmp_path / "file", os.O_CREAT | os.O_RDWR)
    try:
        cases = {
            f"{read}:{os.getppid()}": True,
            f"{read}:{os.getppid() + 1}": False,  # inherited from another process's launcher
            f"{regular}:{os.getppid()}": False,  # a descriptor that is no pipe
            f"999:{os.getppid()}": False,  # one that is not open
            "": False,
        }
        for value, follows in cases.items():
            monkeypatch.setenv(SHARE_ENV, value)
            callbacks = follow_callbacks(deterministic=False)
            assert [type(c) for c in callbacks] == ([FollowThreadShare] if follows else [])
            assert SHARE_ENV not in os.environ  # the run's own processes do not inherit it
        monkeypatch.setenv(SHARE_ENV, f"{read}:{os.getppid()}")
        assert follow_callbacks(deterministic=True) == []  # trainer.deterministic keeps threads
    finally:
        for fd in (read, write, regular):
            os.close(fd)


# Commands for run_side_by_side: READ_SHARE waits until its pipe says 2 threads, then exits 0
# if the file named by argv[1] exists (or no file is named), else 4; without a share, or without
# a 2 within a minute, it exits 3. NO_SHARE exits 5 when it was given a share.
READ_SHARE = f"""
import os, sys, time
fd = os.environ.get({SHARE_ENV!r}, "").partition(":")[0]
deadline = time.monotonic() + 60
while fd and time.monotonic() < deadline:
    if b"2" in os.read(int(fd), 64).split():
        sys.exit(0 if len(sys.argv) < 2 or os.path.exists(sys.argv[1]) else 4)
sys.exit(3)
"""
NO_SHARE = f"import os, sys; sys.exit(5 if {SHARE_ENV!r} in os.environ else 0)"
SLOW = "import pathlib, sys, time; time.sleep(1.5); pathlib.Path(sys.argv[1]).touch()"


def test_commands_side_by_side_hand_an_ended_runs_cores_on_only_when_none_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(thread_share, "allocated_cpus", lambda: 2)
    python = sys.executable
    quick, reader = [python, "-c", "pass"], [python, "-c", READ_SHARE]
    assert run_side_by_side([quick, reader], jobs=2, threads=1) == [0, 0]
    # The third command starts when the first ends: the reader gets 2 threads after it only.
    done = tmp_path / "slow_done"
    slow = [python, "-c", SLOW, str(done)]
    assert run_side_by_side([quick, [*reader, str(done)], slow], jobs=2, threads=1) == [0, 0, 0]
    # Exit statuses come back in the commands' order; a fixed thread count gets no share.
    fail, nothing = [python, "-c", "import sys; sys.exit(7)"], [python, "-c", NO_SHARE]
    monkeypatch.setenv(SHARE_ENV, "5:1")  # nor does one inherited from the driver's launcher
    assert run_side_by_side([fail, nothing, quick], jobs=2, threads=None) == [7, 0, 0]
