"""Cores handed on between runs side by side: the launcher's shares and the run's switch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cnnlab import reproduce
from cnnlab.thread_share import SHARE_ENV, FollowThreadShare, ThreadShares, follow_callbacks


def test_the_running_runs_split_the_cores_only_once_none_is_left_to_start() -> None:
    with ThreadShares(cores=3) as shares:
        paths = {key: shares.start(key, 1) for key in "abc"}
        shares.end("a", spread=False)  # another run takes its place
        assert [paths[k].read_text() for k in "bc"] == ["1", "1"]
        assert not paths["a"].exists()
        shares.end("b", spread=True)
        assert paths["c"].read_text() == "3"
        shares.start("d", 1)
        shares.end("c", spread=True)
        assert shares.path("d").read_text() == "3"
        folder = shares.folder
    assert not folder.exists()
    with ThreadShares(cores=3) as shares:  # 3 cores over 2 runs: the first takes the remainder
        for key in "abc":
            shares.start(key, 1)
        shares.end("c", spread=True)
        assert [shares.path(k).read_text() for k in "ab"] == ["2", "1"]


def test_a_run_takes_the_thread_count_its_launcher_writes(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    share = tmp_path / "share"
    follow = FollowThreadShare(share)
    try:
        follow.follow()  # no file (the launcher has gone): the threads stay
        assert torch.get_num_threads() == before
        share.write_text("1")
        follow.follow()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        follow.follow()  # the file has not changed since: it is not read again
        assert torch.get_num_threads() == 2
        share.write_text("not a number")
        follow.follow()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_runs_follow_a_share_only_when_a_launcher_gives_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SHARE_ENV, raising=False)
    assert follow_callbacks() == []
    monkeypatch.setenv(SHARE_ENV, str(tmp_path / "share"))
    [callback] = follow_callbacks()
    assert isinstance(callback, FollowThreadShare) and callback.path == tmp_path / "share"


# The second command waits until its share file says 2 threads (exit 0), else exits 3.
WAIT_FOR_TWO = f"""
import os, sys, time
path = os.environ.get({SHARE_ENV!r})
deadline = time.monotonic() + 60
while path and time.monotonic() < deadline:
    if open(path).read() == "2":
        sys.exit(0)
    time.sleep(0.05)
sys.exit(3)
"""
NO_SHARE = f"import os, sys; sys.exit(5 if {SHARE_ENV!r} in os.environ else 0)"


def test_reproduce_hands_an_ended_runs_core_to_the_run_still_going(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reproduce, "allocated_cpus", lambda: 2)
    quick, waits = [sys.executable, "-c", "pass"], [sys.executable, "-c", WAIT_FOR_TWO]
    assert reproduce.run_side_by_side([quick, waits], jobs=2, threads=1) == [0, 0]
    # A run whose threads the command fixed (torch_threads=...) gets no share.
    nothing = [sys.executable, "-c", NO_SHARE]
    assert reproduce.run_side_by_side([quick, nothing], jobs=2, threads=None) == [0, 0]
