"""Run records: a run directory less its checkpoints, kept where a results page must outlive it.

A page built from ``outputs/`` dies with that folder (a new machine, a cleaned disk). A run's
record, everything it wrote but its checkpoints (``.hydra/``, ``metrics.json``, event files,
``train.log``, ``environment.json``), is tens of kB: kept in the checkout (cnnlab's own page keeps
them in ``docs/runs``), the page regenerates anywhere from them, and ``make reproduce`` skips the
runs they hold as completed. A record is only ever replaced by a later state of its run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cnnlab.errors import ConfigError
from cnnlab.report.runs import record_status
from cnnlab.rundir import METRICS_FILE, read_metrics

# checkpoints: megabytes, and pickles; .lock: says only whether a process holds the directory
LEFT_OUT = ("checkpoints", ".lock")


def record_of(run_dir: Path, out: Path, records: Path) -> Path:
    """Where the record of ``run_dir`` (a run under ``out``) lives in ``records``."""
    return Path(records) / Path(run_dir).relative_to(out)


def completed_record(record: Path) -> bool:
    """Whether ``record`` holds a completed run."""
    return (read_metrics(record) or {}).get("status") == "completed"


def check_folders(out: Path, records: Path) -> tuple[Path, Path]:
    """``out`` and ``records`` resolved; refused if one holds the other (records would be
    recorded again, or runs taken for records)."""
    out, records = Path(out).resolve(), Path(records).resolve()
    if out == records or out in records.parents or records in out.parents:
        raise ConfigError(
            f"--records {records} and the runs' root {out} must not hold each other: pass "
            "another --records folder (cnnlab's own: docs/runs)."
        )
    return out, records


def keep_records(out: Path, records: Path) -> list[str]:
    """Copy the record of every run under ``out`` that has ended into ``records`` (same relative
    paths); return a line for each record kept over its run's copy, and why."""
    out, records = check_folders(out, records)
    notes = []
    for config in sorted(out.rglob(".hydra/config.yaml")):
        run_dir = config.parent.parent
        metrics = read_metrics(run_dir)
        status = record_status(run_dir, metrics or {}) if metrics else None
        if status in (None, "running"):  # nothing recorded yet, or still training: not now
            continue
        record = record_of(run_dir, out, records)
        kept = _why_keep(read_metrics(record), {**metrics, "status": status})
        if kept:
            notes.append(f"kept the record {record}: {kept}; {run_dir} is not copied over it")
            continue
        _replace(run_dir, record, status)
    return notes


def _progress(metrics: dict[str, Any]) -> tuple[bool, int]:
    return metrics.get("status") == "completed", int(metrics.get("global_step") or 0)


def _why_keep(record: dict[str, Any] | None, run: dict[str, Any]) -> str | None:
    """Why the existing ``record`` must not be replaced by ``run`` (None: replace it)."""
    if record is None:
        return None
    if _progress(run) < _progress(record):
        return "it got further than this run (a run started again from scratch elsewhere?)"
    if _progress(record)[0] and _same(record, run) is False:
        return "it is another completed run (move it away to record this one)"
    return None


def _same(record: dict[str, Any], run: dict[str, Any]) -> bool:
    # a run's metrics never change once it has completed: different ones are another run
    return all(record.get(k) == run.get(k) for k in ("global_step", "val/acc", "wall_time_s"))


def _replace(run_dir: Path, record: Path, status: str) -> None:
    """Copy ``run_dir`` less ``LEFT_OUT`` to ``record``, swapped in whole (a crash in between
    leaves the old record or the new one, never half of each)."""
    fresh = record.with_name(record.name + ".new")
    old = record.with_name(record.name + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(run_dir, fresh, ignore=shutil.ignore_patterns(*LEFT_OUT))
    metrics_file = fresh / METRICS_FILE
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("status") != status:  # "running" whose process is gone: say so for good
        metrics_file.write_text(json.dumps({**metrics, "status": status}, indent=2) + "\n")
    if record.exists():
        shutil.rmtree(old, ignore_errors=True)
        record.rename(old)
    fresh.rename(record)
    shutil.rmtree(old, ignore_errors=True)
