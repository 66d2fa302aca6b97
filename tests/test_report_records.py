"""Run records (``--records``): the page's evidence kept apart from the run directories."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest

from cnnlab.report.paper import write_paper
from cnnlab.report.records import keep_records
from rundirs import completed, write_run

from conftest import ROOT, run_cli


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_ended_runs_are_recorded_without_checkpoints_and_live_ones_wait(tmp_path: Path) -> None:
    out, records = tmp_path / "out", tmp_path / "records"
    done = write_run(out, "dlwpt_net", 123, completed(0.88, global_step=100), val_curve=[0.8])
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (done / ".lock").touch()
    (done / "train.log").write_text("epoch 1/1\n")
    (done / "hpc_ckpt_1.ckpt").write_bytes(b"weights")  # where Lightning's Slurm save puts one
    (done / "slurm.out").symlink_to(tmp_path / "gone.out")  # a cleaned-up job log
    killed = write_run(out, "dlwpt_net", 124, {"status": "running", "global_step": 40})
    (killed / ".lock").touch()  # free: its process is gone
    live = write_run(out, "dlwpt_net", 125, {"status": "running", "global_step": 10})
    unrecorded = write_run(out, "dlwpt_net", 126, None)  # started, nothing recorded yet
    with (live / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert keep_records(out, records) == []
    record = records / "dlwpt_net" / "seed_123"
    assert _files(record) == _files(done) - {"checkpoints/last.ckpt", "hpc_ckpt_1.ckpt", ".lock"}
    assert (record / "slurm.out").is_symlink()  # copied as the link it is, not followed
    assert _metrics(record) == _metrics(done)
    # a run killed while training is recorded as what it is now, for good: interrupted
    assert _metrics(records / "dlwpt_net" / "seed_124")["status"] == "interrupted"
    assert _metrics(killed)["status"] == "running"  # its own record is not touched
    assert not (records / "dlwpt_net" / "seed_125").exists()
    assert not (records / "dlwpt_net" / "seed_126").exists()
    assert sorted(p.name for p in (records / "dlwpt_net").iterdir()) == ["seed_123", "seed_124"]
    # the page from the records is the page from the run directories (less the two not recorded)
    shutil.rmtree(live)
    shutil.rmtree(unrecorded)
    page_runs, page_records = tmp_path / "a" / "R.md", tmp_path / "b" / "R.md"
    write_paper(out, page_runs)
    write_paper(records, page_records)
    assert page_records.read_text().replace(str(records), str(out)) == page_runs.read_text()


def _steps(run: Path, last: int) -> None:
    """Event files up to global step ``last``, as a run that records no global_step leaves."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run)) as writer:
        writer.add_scalar("train/loss_step", 0.5, global_step=last)


def test_a_record_is_replaced_only_by_a_later_state_of_its_run(tmp_path: Path) -> None:
    out, records = tmp_path / "out", tmp_path / "records"
    record = records / "dlwpt_res" / "seed_123"
    write_run(records, "dlwpt_res", 123, {"status": "interrupted", "global_step": 500})
    # the run started again from scratch (a new machine): it has not caught up yet
    run = write_run(out, "dlwpt_res", 123, {"status": "interrupted", "global_step": 200})
    (note,) = keep_records(out, records)
    assert f"kept the record {record}: it got further than this run" in note
    assert _metrics(record)["global_step"] == 500
    # a failed run records no global_step: its event files say how far it got
    (run / "metrics.json").write_text('{"status": "failed", "error": "CUDA out of memory"}')
    _steps(run, 300)
    assert "it got further" in keep_records(out, records)[0]
    _steps(run, 700)
    assert keep_records(out, records) == []
    assert _metrics(record) == {"status": "failed", "error": "CUDA out of memory"}
    # ... and a fresh restart does not replace the failure's evidence either
    (run / "metrics.json").write_text('{"status": "interrupted", "global_step": 3}')
    for events in run.glob("events.out.tfevents.*"):
        events.unlink()
    assert "it got further" in keep_records(out, records)[0]
    # the run resumed to its end: its later state replaces the record
    (run / "metrics.json").write_text(json.dumps(completed(0.9, global_step=900)))
    assert keep_records(out, records) == []
    assert _metrics(record)["status"] == "completed"
    # another completed run at the same place is not copied over the record; the same one is
    (run / "metrics.json").write_text(json.dumps(completed(0.8, global_step=900)))
    (note,) = keep_records(out, records)
    assert "it is another completed run (move it away to record this one)" in note
    assert _metrics(record)["val/acc"] == 0.9
    (run / "metrics.json").write_text(json.dumps(completed(0.9, global_step=900)))
    (run / "train.log").write_text("the same run\n")
    assert keep_records(out, records) == []
    assert (record / "train.log").read_text() == "the same run\n"
    # a run of another config, however far it got, is not a later state of the record
    other = write_run(tmp_path / "o2", "dlwpt_res", 123, completed(0.9, global_step=9000),
                      overrides=("trainer.max_epochs=200",))  # fmt: skip
    config = (
        (other / ".hydra" / "config.yaml").read_text().replace("max_epochs: 100", "max_epochs: 200")
    )
    (run / ".hydra" / "config.yaml").write_text(config)
    (run / "metrics.json").write_text(json.dumps(completed(0.9, global_step=9000)))
    (note,) = keep_records(out, records)
    assert "it is a run of another config (trainer.max_epochs: 100 -> 200)" in note
    assert _metrics(record)["global_step"] == 900
    assert sorted(p.name for p in record.parent.iterdir()) == ["seed_123"]
    assert not (records / ".staging").exists()


def test_a_crash_while_swapping_loses_no_record_and_leaves_no_run_behind(tmp_path: Path) -> None:
    out, records = tmp_path / "out", tmp_path / "records"
    write_run(out, "dlwpt_net", 123, completed(0.88, global_step=100))
    # a crash between taking the old record out and putting the new one in, after copying
    taken = write_run(records / ".staging" / "old", "dlwpt_res", 123, completed(0.9))
    write_run(records / ".staging" / "new", "dlwpt_res", 123, completed(0.9))
    half = write_run(records / ".staging" / "new", "dlwpt_net", 123, completed(0.88))
    (half / "metrics.json").unlink()  # a copy cut short
    from cnnlab.report.runs import find_runs

    assert find_runs(records) == []  # nothing staged is read as a run
    assert keep_records(out, records) == []
    assert _metrics(records / "dlwpt_res" / "seed_123")["val/acc"] == 0.9  # put back
    assert not taken.exists() and not (records / ".staging").exists()
    assert [r.path for r in find_runs(records)] == [
        records / "dlwpt_net" / "seed_123",
        records / "dlwpt_res" / "seed_123",
    ]
    # the runs' root passed as one run, or as a folder holding runs inside runs: not recorded
    (note,) = keep_records(out / "dlwpt_net" / "seed_123", tmp_path / "r2")
    assert "is one run; pass the folder that holds runs" in note
    assert not (tmp_path / "r2").exists()


def test_records_refused_inside_the_runs_and_without_paper(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out, "dlwpt_net", 123, completed(0.88))
    (tmp_path / "a_file").write_text("mine\n")
    before = _files(tmp_path)
    nested = "must not hold each other"
    cases = [(out, nested), (out / "records", nested), (tmp_path, nested),
             (tmp_path / "a_file", "is a file")]  # fmt: skip
    for records, message in cases:
        refused = run_cli("cnnlab.report", str(out), "--paper", "--records", str(records),
                          "--out", str(tmp_path / "R.md"))  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr
    typo = run_cli("cnnlab.report", str(tmp_path / "ouptut"), "--paper", "--records",
                   str(tmp_path / "r"), "--out", str(tmp_path / "R.md"))  # fmt: skip
    assert typo.returncode == 2 and "ouptut is not a directory" in typo.stderr
    alone = run_cli("cnnlab.report", str(out), "--records", str(tmp_path / "r"))
    assert alone.returncode == 2 and "--records goes with --paper" in alone.stderr
    assert _files(tmp_path) == before
    for records, message in ((out, "must not hold each other"), (tmp_path / "a_file", "is a file")):
        driver = run_cli("cnnlab.reproduce", str(tmp_path), "--out", str(out), "--records",
                         str(records), "--dry-run")  # fmt: skip
        assert driver.returncode == 2 and message in driver.stderr
    assert _files(tmp_path) == before


def test_the_committed_page_regenerates_from_the_committed_records(tmp_path: Path) -> None:
    """docs/RESULTS.md is what ``python -m cnnlab.report --paper docs/runs`` writes."""
    records = ROOT / "docs" / "runs"
    if not records.is_dir():
        pytest.skip("no run records are committed yet")
    page = tmp_path / "docs" / "RESULTS.md"
    shutil.copytree(ROOT / "docs", page.parent, ignore=shutil.ignore_patterns("runs", "*.png"))
    written = run_cli("cnnlab.report", "--paper", "docs/runs", "--out", str(page), cwd=ROOT)
    assert written.returncode == 0, written.stderr[-3000:]
    assert page.read_text() == (ROOT / "docs" / "RESULTS.md").read_text()
    assert {p.name for p in page.parent.glob("*.png")} == {
        p.name for p in (ROOT / "docs").glob("results_*.png")
    }
