"""Cores handed on between runs side by side: the launcher's shares and the run's switch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import thread_share
from cnnlab.callbacks import FollowThreadShare
from cnnlab.thread_share import SHARE_ENV, ThreadShares, follow_callbacks, run_side_by_side


def _counts(fd: int) -> list[int] | None:
    """The thread counts written into the pipe ``fd`` and not read yet; None once it is closed
    (never blocks)."""
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return []
    return [int(c) for c in data.split()] if data else None


def test_the_running_runs_split_the_cores_only_once_none_is_left_to_start() -> None:
    reads = []
    with ThreadShares(cores=3) as shares:
        a, b, c = (shares.start(key, 1)[0] for key in "abc")
        reads += [a, b, c]
        shares.end("a")  # another run takes its place: nothing is spread
        assert _counts(b) == _counts(c) == [] and _counts(a) is None
        shares.end("b")
        shares.spread()
        assert _counts(c) == [3]
        shares.spread()  # nothing new to say
        assert _counts(c) == []
        reads.append(d := shares.start("d", 1)[0])
        shares.end("c")
        shares.spread()
        assert _counts(d) == [3]
    assert _counts(d) is None  # closing the shares closes every pipe
    with ThreadShares(cores=3) as shares:  # 3 cores over 2 runs: the first takes the remainder
        a, b, c = (shares.start(key, 1)[0] for key in "abc")
        reads += [a, b, c]
        shares.end("c")
        shares.spread()
        assert [_counts(a), _counts(b)] == [[2], []]  # b keeps its 1 thread
    with ThreadShares(cores=4) as shares:  # a run that does not follow keeps its threads
        a, b, c = (shares.start(key, 1)[0] for key in "abc")
        os.close(c)
        shares.end("b")
        shares.spread()
        assert (_counts(a) or [0])[-1] == 3 and shares.fixed == {"c"}  # a run takes the last
        reads += [a, b]
    for fd in reads:
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
        follow.on_train_batch_start(None)  # nothing new since: nothing changes
        assert torch.get_num_threads() == 2
        os.write(write, b"1\n")
        follow.on_validation_start(None, None)  # and before validation and test
        assert torch.get_num_threads() == 1
        os.write(write, b"2\n")
        follow.on_test_start(None, None)
        assert torch.get_num_threads() == 2
        os.write(write, b"x\n")
        follow.follow()
        assert torch.get_num_threads() == 2
        os.close(write)  # the launcher has gone: the threads stay, the pipe is closed
        follow.follow()
        assert torch.get_num_threads() == 2 and follow.fd is None
        with pytest.raises(OSError):
            os.fstat(read)
    finally:
        torch.set_num_threads(before)


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
        with pytest.raises(BrokenPipeError):  # and closes its end, so its launcher knows
            os.write(write, b"2\n")
    finally:
        for fd in (write, regular):
            os.close(fd)


# Commands for run_side_by_side: READ_SHARE waits until its pipe says 2 threads, then exits 0
# if the file named by argv[1] exists (or no file is named), else 4; without a share, or without
# a 2 within a minute, it exits 3. NO_SHARE exits 5 when it was given a share.
READ_SHARE = f"""
import os, select, sys, time
fd = os.environ.get({SHARE_ENV!r}, "").partition(":")[0]
deadline = time.monotonic() + 60
while fd and time.monotonic() < deadline:
    if select.select([int(fd)], [], [], 0.1)[0] and b"2" in os.read(int(fd), 64).split():
        sys.exit(0 if len(sys.argv) < 2 or os.path.exists(sys.argv[1]) else 4)
sys.exit(3)
"""
NO_SHARE = f"import os, sys; sys.exit(5 if {SHARE_ENV!r} in os.environ else 0)"
SLOW = "import pathlib, sys, time; time.sleep(1.5); pathlib.Path(sys.argv[1]).touch()"


def test_commands_side_by_side_hand_the_cores_on_only_when_none_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(thread_share, "allocated_cpus", lambda: 2)
    python = sys.executable
    quick, reader = [python, "-c", "pass"], [python, "-c", READ_SHARE]
    assert run_side_by_side([quick, reader], jobs=2, threads=1) == [0, 0]
    # Fewer commands than jobs: the lone run takes every core at once.
    assert run_side_by_side([reader], jobs=2, threads=1) == [0]
    # The third command starts when the first ends: the reader gets 2 threads after it only.
    done = tmp_path / "slow_done"
    slow = [python, "-c", SLOW, str(done)]
    assert run_side_by_side([quick, [*reader, str(done)], slow], jobs=2, threads=1) == [0, 0, 0]
    # Exit statuses come back in the commands' order, not the order they end in; a fixed
    # thread count gets no share, nor does a command of a driver that was given one itself.
    slow_fail = [python, "-c", "import sys, time; time.sleep(1); sys.exit(7)"]
    nothing = [python, "-c", NO_SHARE]
    monkeypatch.setenv(SHARE_ENV, "5:1")
    assert run_side_by_side([slow_fail, nothing, quick], jobs=2, threads=None) == [7, 0, 0]
