"""Status of each job of a sweep: ``python -m cnnlab.status <sweep dir>`` (or ``cnnlab-status``).

Reads the run directories (``metrics.json``, ``environment.json``) and, for a submitit sweep,
the ``jobs.json`` the launcher wrote, so jobs that have not started yet are listed too (with
Slurm's queue state where ``squeue`` answers), and for a local sweep the jobs of its
``multirun.yaml`` that never started. A ``running`` record whose process is gone reads
``interrupted``, as in the report. Works after the submitting command has exited.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from cnnlab import cluster
from cnnlab.cli import run_cli
from cnnlab.errors import ConfigError
from cnnlab.launchers import MANIFEST
from cnnlab.report.runs import find_runs, missing_jobs, record_status
from cnnlab.rundir import ENVIRONMENT_FILE, METRICS_FILE, read_metrics


def sweep_status(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job: its number, status, Slurm job id, metric and error."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(
            f"{sweep_dir} is not a directory; pass a sweep directory (hydra.sweep.dir)."
        )
    manifest_path = sweep_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    submitted = manifest.get("jobs", {})
    runs = {p.parent.name: p.parent for p in sweep_dir.glob(f"*/{METRICS_FILE}")}
    runs.update({p.parent.name: p.parent for p in sweep_dir.glob("*/.hydra")})
    names = sorted(set(runs) | set(submitted), key=_job_order)
    # Only Slurm jobs are in a queue (submitit_local's are local processes; squeue would wait
    # for a controller that is not there).
    on_slurm = manifest.get("executor", "slurm") == "slurm"
    ids = [j["job_id"] for j in submitted.values()]
    queued = cluster.queue_states(ids) if ids and on_slurm else {}
    # A local sweep leaves no trace of the jobs it never started but its multirun.yaml (a
    # submitted sweep lists them in jobs.json).
    never = {} if submitted else dict(missing_jobs(sweep_dir, find_runs(sweep_dir)))
    rows = [_not_started(str(n), overrides) for n, overrides in never.items() if str(n) not in runs]
    for name in names:
        job = submitted.get(name, {})
        run_dir = Path(job["run_dir"]) if job else runs[name]
        metrics = read_metrics(run_dir) or {}
        env_path = run_dir / ENVIRONMENT_FILE
        env = json.loads(env_path.read_text()) if env_path.is_file() else {}
        job_id = job.get("job_id") or (env.get("slurm") or {}).get("job_id")
        status = record_status(run_dir, metrics)
        if job_id in queued and status != "completed":
            # a requeued job still says "running" or "interrupted" until it starts again
            status = (
                queued[job_id].lower() if status is None else f"{status} ({queued[job_id].lower()})"
            )
        rows.append(
            {
                "job": name,
                "status": status or ("submitted" if job else "not started"),
                "slurm_job": job_id,
                "val/acc_best": metrics.get("val/acc_best"),
                "error": (metrics.get("error") or "").splitlines()[0][:100]
                if metrics.get("error")
                else "",
                "run_dir": str(run_dir),
            }
        )
    return sorted(rows, key=lambda r: _job_order(r["job"]))


def _job_order(name: str) -> tuple[bool, int, str]:
    return (not name.isdigit(), int(name) if name.isdigit() else 0, name)


def _not_started(job: str, overrides: str) -> dict[str, Any]:
    return {
        "job": job,
        "status": "not started",
        "slurm_job": None,
        "val/acc_best": None,
        "error": overrides,
        "run_dir": "",
    }


def print_summary(sweep_dir: Path) -> None:
    """What a sweep prints at its end: its directory, a count per job status and the commands
    that follow up (the report; for jobs still queued or running, ``cnnlab.status``)."""
    if not sweep_dir.is_dir():
        return
    rows = sweep_status(sweep_dir)
    shown = _shown(sweep_dir)
    print(f"Sweep {shown}: {_counts(rows) or 'no jobs'}.")
    print(f"Report: python -m cnnlab.report {shown}")
    waiting = ("submitted", "running", "pending")
    if any(word in r["status"] for r in rows for word in waiting):
        print(f"Follow the jobs: python -m cnnlab.status {shown}")


def _counts(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r["status"] for r in rows)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = path.absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table, one line per job, and a count per status."""
    head = f"{'job':>4}  {'status':<22} {'slurm job':<12} {'val/acc_best':>12}  error or overrides"
    lines = [head]
    for r in rows:
        acc = f"{r['val/acc_best']:.4f}" if isinstance(r["val/acc_best"], int | float) else "-"
        lines.append(
            f"{r['job']:>4}  {r['status']:<22} {r['slurm_job'] or '-':<12} {acc:>12}  {r['error']}"
        )
    lines.append(_counts(rows) or "no jobs")
    return "\n".join(lines)


def _status(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnlab-status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    print(format_rows(sweep_status(args.sweep_dir)))


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``cnnlab-status <sweep dir>``."""
    run_cli(_status, argv, own_help=True)


if __name__ == "__main__":
    main()
