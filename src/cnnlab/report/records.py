"""Run records: a run directory less its checkpoints, kept where a results page must outlive it.

A page built from ``outputs/`` dies with that folder (a new machine, a cleaned disk). A run's
record, everything it wrote but its checkpoints (``.hydra/``, ``metrics.json``, event files,
``train.log``, ``environment.json``), is tens of kB: kept in the checkout (cnnlab's own page keeps
them in ``docs/runs``), the page regenerates anywhere from them, and ``make reproduce`` skips the
runs they hold as completed. A record is only ever replaced by a later state of the same run
(same config, at least as many steps); anything else is kept, and the command says why.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.report.runs import record_status, run_dirs
from cnnlab.run_lifecycle import config_differences, is_execution_only
from cnnlab.rundir import METRICS_FILE, read_metrics

# checkpoints (megabytes, and pickles) wherever they are; .lock says only who holds the directory
LEFT_OUT = ("checkpoints", "*.ckpt", ".lock")
# Copies are staged here (a dot folder: never read as runs) and swapped in whole.
STAGING = ".staging"


def record_of(run_dir: Path, out: Path, records: Path) -> Path:
    """Where the record of ``run_dir`` (a run under ``out``) lives in ``records``."""
    return Path(records) / Path(run_dir).relative_to(out)


def check_folders(out: Path, records: Path, out_must_exist: bool = True) -> tuple[Path, Path]:
    """``out`` and ``records`` resolved, or one message naming what is wrong with them."""
    out, records = Path(out).resolve(), Path(records).resolve()
    if records.exists() and not records.is_dir():
        raise ConfigError(
            f"--records {records} is a file; pass a folder (cnnlab's own: docs/runs)."
        )
    if out_must_exist and not out.is_dir():
        raise ConfigError(
            f"{out} is not a directory; pass the root of the reproduction runs "
            "(e.g. outputs/reproduce)."
        )
    if out == records or out in records.parents or records in out.parents:
        raise ConfigError(
            f"--records {records} and the runs' root {out} must not hold each other: pass "
            "another --records folder (cnnlab's own: docs/runs)."
        )
    return out, records


def completed_record(record: Path, overrides: list[str]) -> bool:
    """Whether ``record`` holds a completed run of these overrides (execution-only ones aside)."""
    if (read_metrics(record) or {}).get("status") != "completed":
        return False
    try:
        recorded = [str(o) for o in OmegaConf.load(record / ".hydra" / "overrides.yaml")]
    except (OSError, ValueError):
        return False
    return _trained(recorded) == _trained(overrides)


def _trained(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not is_execution_only(o.split("=")[0]))


def keep_records(out: Path, records: Path) -> list[str]:
    """Copy the record of every run under ``out`` that has ended into ``records`` (same relative
    paths); return a line for each run not recorded, and why."""
    out, records = check_folders(out, records)
    _recover(records)
    notes = []
    found = run_dirs(out)
    for run_dir in found:
        if run_dir == out:  # a run passed as the root: its record would be the folder itself
            notes.append(f"not recorded: {run_dir} is one run; pass the folder that holds runs")
            continue
        if any(run_dir in other.parents for other in found):
            notes.append(f"not recorded: {run_dir} holds other runs")
            continue
        try:
            note = _keep(run_dir, record_of(run_dir, out, records), records)
        except (OSError, shutil.Error) as err:
            shutil.rmtree(records / STAGING, ignore_errors=True)
            note = f"not recorded: {run_dir} could not be copied ({err})"
        if note:
            notes.append(note)
    return notes


def _keep(run_dir: Path, record: Path, records: Path) -> str | None:
    with _unheld(run_dir) as free:
        metrics = read_metrics(run_dir) if free else None
        status = record_status(run_dir, metrics) if metrics else None
        if status in (None, "running"):  # still training, or nothing recorded yet: not now
            return None
        kept = _why_keep(record, run_dir, metrics)
        if kept:
            return f"kept the record {record}: {kept}; {run_dir} is not copied over it"
        _replace(run_dir, record, records, status)
    return None


@contextlib.contextmanager
def _unheld(run_dir: Path) -> Iterator[bool]:
    """A shared hold on the run's lock while it is copied (training takes it exclusively, so a
    run that starts or resumes meanwhile waits); False: a process holds it now."""
    try:
        handle = (run_dir / ".lock").open("rb")
    except OSError:  # no lock file: the recorded status and pid decide
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            yield err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            return
        yield True


def _why_keep(record: Path, run_dir: Path, run: dict[str, Any]) -> str | None:
    """Why ``record`` must not be replaced by the run in ``run_dir`` (None: replace it)."""
    if not record.exists():
        return None
    mine = read_metrics(record)
    if mine is None:
        return "its metrics.json is missing or unreadable (mend or remove the record)"
    try:
        stored = OmegaConf.to_container(OmegaConf.load(record / ".hydra" / "config.yaml"))
        requested = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except (OSError, ValueError):
        return "its .hydra/config.yaml cannot be read (mend or remove the record)"
    changed = config_differences(stored, requested)
    if changed:
        return f"it is a run of another config ({changed[0]}); move it away to record this one"
    if _steps(run_dir, run) < _steps(record, mine):
        return "it got further than this run (a run started again from scratch?)"
    same = all(mine.get(k) == run.get(k) for k in ("val/acc", "test/acc", "wall_time_s"))
    if mine.get("status") == "completed" and not same:
        return "it is another completed run (move it away to record this one)"
    return None


def _steps(folder: Path, metrics: dict[str, Any]) -> int:
    """How far a run got: its recorded global step, else (a failed or killed run records none)
    the last step in its event files."""
    step = metrics.get("global_step")
    if isinstance(step, int):
        return step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last = 0
    for events in folder.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            last = max([last, *(e.step for e in accumulator.Scalars(tag))])
    return last


def _replace(run_dir: Path, record: Path, records: Path, status: str) -> None:
    """Copy ``run_dir`` less ``LEFT_OUT`` to ``record`` through the staging folder: a crash
    leaves the old record or the new one, and the next call puts back an old one it took out."""
    relative = record.relative_to(records)
    fresh, old = records / STAGING / "new" / relative, records / STAGING / "old" / relative
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run_dir, fresh, symlinks=True, ignore=shutil.ignore_patterns(*LEFT_OUT))
    metrics_file = fresh / METRICS_FILE
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("status") != status:  # "running" whose process is gone: say so for good
        metrics_file.write_text(json.dumps({**metrics, "status": status}, indent=2) + "\n")
    record.parent.mkdir(parents=True, exist_ok=True)
    if record.exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        record.rename(old)
    fresh.rename(record)
    shutil.rmtree(records / STAGING, ignore_errors=True)


def _recover(records: Path) -> None:
    """Put back each record a crash left taken out; drop half-made copies."""
    taken = records / STAGING / "old"
    for old in run_dirs(taken) if taken.is_dir() else []:
        record = records / old.relative_to(taken)
        if not record.exists():
            record.parent.mkdir(parents=True, exist_ok=True)
            old.rename(record)
    shutil.rmtree(records / STAGING, ignore_errors=True)
