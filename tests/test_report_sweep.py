"""The sweep report: not-started jobs, debug runs, interrupted runs, fair comparisons, history."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from cnnlab.report.runs import find_runs, load_run
from cnnlab.report.sweep import HISTORY_KEPT, build_rows, write_report
from cnnlab.rundir import pid_alive
from rundirs import completed, write_run

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# what hydra/sweeper=basic writes into multirun.yaml
CNNLAB_GRID = "hydra_plugins.cnnlab_plugins.CnnlabGridSweeper"


@contextmanager
def lock_held_elsewhere(run_dir: Path) -> Iterator[None]:
    """Another process holds ``run_dir``'s lock (as training does) for the block."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            str(run_dir / ".lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate(timeout=10)


def _sweep(root: Path, jobs: dict[str, tuple[str, ...]], sweeper: str = BASIC) -> None:
    """A sweep over model.width x seed (2 x 2 jobs) of which only ``jobs`` started."""
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": sweeper,
                "params": {"model.width": "8,16"},
            },
            "overrides": {"task": ["experiment=dlwpt_width", "seed=1,2"]},
        }
    }
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    for name, overrides in jobs.items():
        write_run(
            root,
            "dlwpt_width",
            int(overrides[1].split("=")[1]),
            completed(0.8),
            overrides=overrides[:1],
            name=name,
        )


@pytest.mark.parametrize("sweeper", [BASIC, CNNLAB_GRID])
def test_jobs_that_never_started_are_listed(tmp_path: Path, sweeper: str) -> None:
    sweep = tmp_path / "sweep"
    _sweep(sweep, {"0": ("model.width=8", "seed=1"), "1": ("model.width=8", "seed=2")}, sweeper)
    table = write_report(sweep)["md"].read_text()
    assert "## Jobs of the sweep that never started" in table
    assert "- not started: `model.width=16 experiment=dlwpt_width seed=1`" in table
    assert "- not started: `model.width=16 experiment=dlwpt_width seed=2`" in table
    assert "model.width=8 experiment" not in table


def test_debug_runs_are_left_out_and_a_dead_running_run_is_interrupted(tmp_path: Path) -> None:
    write_run(tmp_path, "dlwpt_net", 123, completed(0.89), val_curve=[0.8, 0.89])
    write_run(tmp_path, "dlwpt_net", 124, completed(0.2), debug="fast_dev_run", name="debug")
    killed = write_run(tmp_path, "dlwpt_net", 125, {"status": "running"}, val_curve=[0.7] * 3)
    (killed / ".lock").touch()  # no process holds it
    table = write_report(tmp_path)["md"].read_text()
    assert "## Debug runs (fast_dev_run; left out of the table)\n\n- `dlwpt_net/debug`" in table
    assert "0.2000" not in table
    assert (
        "`dlwpt_net/seed_125` (interrupted): stopped after epoch 3; resume=true continues it"
        in (table)
    )


def test_the_lock_not_a_reused_pid_says_whether_a_run_is_running(tmp_path: Path) -> None:
    # pid 1 always exists (init, or a container's first process): a dead run's recorded pid
    # may be reused like that; only the lock, freed by the kernel when the run dies, tells.
    assert pid_alive(1)
    record = {"status": "running", "pid": 1, "hostname": socket.gethostname()}
    run = write_run(tmp_path, "dlwpt_net", 125, record)
    (run / ".lock").touch()
    assert load_run(run).status == "interrupted"
    with lock_held_elsewhere(run):
        assert load_run(run).status == "running"
    (run / ".lock").unlink()  # no lock (CNNLAB_RUN_LOCK=off): the pid is all there is
    assert load_run(run).status == "running"
    dead = write_run(tmp_path, "dlwpt_net", 126, {**record, "pid": 4999999})
    assert load_run(dead).status == "interrupted"


def test_published_figure_only_for_the_experiments_own_data(tmp_path: Path) -> None:
    # A digits run of nb_mnist_mlp is not an MNIST result: no -56 points against 95.2%.
    write_run(
        tmp_path, "nb_mnist_mlp", 42, completed(0.39), overrides=("data=digits",), data="digits"
    )
    write_run(tmp_path, "nb_mnist_mlp", 43, completed(0.95, test=0.953))
    rows, swept = build_rows(find_runs(tmp_path), tmp_path)
    assert swept == ["data"]
    by_data = {row.swept["data"]: row.comparison for row in rows}
    assert by_data["digits"].measured == []
    assert "data=digits is not the experiment's data (mnist)" in by_data["digits"].reason
    assert by_data["-"].measured == [0.953] and by_data["-"].within()
    table = write_report(tmp_path)["md"].read_text()
    assert "-0.56" not in table and "+0.0010 ✓" in table


def test_the_report_history_keeps_the_last_few(tmp_path: Path) -> None:
    write_run(tmp_path, "dlwpt_net", 123, completed(0.89))
    for _ in range(HISTORY_KEPT + 3):
        write_report(tmp_path)
    history = sorted((tmp_path / ".report_history").iterdir())
    assert len(history) == HISTORY_KEPT
    # Seven earlier reports were archived, numbered 1-7: the oldest two went.
    assert [int(p.name.split("_")[0]) for p in history] == [3, 4, 5, 6, 7]
