#!/usr/bin/env python
"""Start-up time of ``python -m cnnlab.train`` and the cost of a sweep, as a user launches them.

``python scripts/bench_startup.py [--model gdl_cnn] [--repeats 3] [--sweep-jobs 8] [--json FILE]``
(``make bench-startup ARGS="..."``).

* **start-up**: seconds from launching ``python -m cnnlab.train data=synthetic ...`` (default
  callbacks, sanity validation) to the start of its first training batch; cnnlab's
  ``StepClock`` callback, added on the command line, records the clock when the callbacks are
  built (imports and config done), at fit start and at the first batch.
* ``--sweep-jobs N`` (0: off) also times an N-job ``-m`` sweep (``data=synthetic
  seed=0..N-1 trainer.max_epochs=1``) with the basic launcher and with
  ``hydra/launcher=joblib`` (2 jobs at once), alternated ``--sweep-repeats`` times: wall time,
  jobs per minute, and the per-job overhead = wall time / N - the jobs' own ``wall_time_s``
  (fit + test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    ROOT,
    clock_callback,
    device_of,
    machine,
    markdown_table,
    median,
    speeds,
)

# --tiny sweeps (tests): two steps of each stage per job
TINY_JOB = [f"trainer.limit_{stage}_batches=2" for stage in ("train", "val", "test")]


def startup_run(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Seconds from launching ``python -m cnnlab.train`` to its first training batch."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "clock.json"
        command = [
            sys.executable,
            "-m",
            "cnnlab.train",
            "data=synthetic",
            f"data.image_size={args.image_size}",
            "data.in_channels=3",
            f"model={args.model}",
            f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "test_after_fit=false",
            f"hydra.run.dir={Path(tmp) / 'run'}",
            *clock_callback(out),
        ]
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"start-up run failed:\n{done.stderr[-3000:]}")
        times = json.loads(out.read_text())
    return {
        "startup_s": times["first_step"] - started,
        "to_trainer_built_s": times["trainer_built"] - started,
        "to_fit_start_s": times["fit_start"] - started,
        "cpu_s": times["first_step_cpu_s"],
    }


def sweep_run(args: argparse.Namespace, workdir: Path, parallel: bool) -> dict[str, float]:
    """Wall time of an N-job sweep on synthetic data, and the jobs' own training seconds."""
    jobs = args.sweep_jobs
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sweep_dir = Path(tmp) / "sweep"
        command = [
            sys.executable,
            "-m",
            "cnnlab.train",
            "-m",
            "data=synthetic",
            f"seed={','.join(str(i) for i in range(jobs))}",
            "trainer.max_epochs=1",
            *([*TINY_JOB, f"data.image_size={args.image_size}"] if args.tiny else []),
            f"hydra.sweep.dir={sweep_dir}",
            *(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if parallel else []),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"sweep failed:\n{done.stderr[-3000:]}")
        train_s = [
            json.loads((sweep_dir / str(i) / "metrics.json").read_text())["wall_time_s"]
            for i in range(jobs)
        ]
    return {
        "jobs": jobs,
        "wall_s": wall,
        "jobs_per_min": 60 * jobs / wall,
        "train_s_mean": statistics.mean(train_s),
        "overhead_per_job_s": wall / jobs - statistics.mean(train_s),
    }


def table(result: dict[str, Any]) -> str:
    """The markdown report printed at the end (the same numbers as the JSON file)."""
    m = result["machine"]
    runs = result["startup_runs"]
    parts = ", ".join(
        f"{label} {median(speeds(runs, k)):.2f}"
        for k, label in (
            ("to_trainer_built_s", "imports+config+build"),
            ("to_fit_start_s", "fit start"),
            ("cpu_s", "CPU s"),
        )
    )
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, lightning "
        f"{m['lightning']}, device {m['device']}",
        "",
        *markdown_table(
            ["measure", "value"],
            [
                [
                    "start-up: launch to first training step, s",
                    f"{result['startup_s']:.2f} ({parts})",
                ]
            ],
        ),
    ]
    if result.get("sweep"):
        header = ["sweep (data=synthetic, 1 epoch per job)", "jobs", "wall s", "jobs/min"]
        header += ["train s/job", "overhead s/job"]
        rows = [
            [
                label,
                f"{sw['jobs']:.0f}",
                f"{sw['wall_s']:.1f}",
                f"{sw['jobs_per_min']:.1f}",
                f"{sw['train_s_mean']:.2f}",
                f"{sw['overhead_per_job_s']:.2f}",
            ]
            for label, sw in result["sweep"].items()
        ]
        lines += ["", *markdown_table(header, rows)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gdl_cnn", help="model config of the start-up runs")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="start-up runs (median)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--sweep-jobs", type=int, default=0, help="also time an N-job sweep")
    p.add_argument("--sweep-repeats", type=int, default=1, help="rounds of the two sweeps")
    p.add_argument(
        "--tiny", action="store_true", help="small images, 2 steps, at most 2 sweep jobs (tests)"
    )
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: tmp)")
    args = p.parse_args(argv)
    if args.tiny:
        args.image_size = 8
        args.sweep_jobs = min(args.sweep_jobs, 2)
    if args.repeats < 1 or args.sweep_jobs < 0:
        p.error("--repeats must be >= 1 and --sweep-jobs >= 0")
    args.device = device_of(args.device)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        startup = [startup_run(args, workdir) for _ in range(args.repeats)]
        result: dict[str, Any] = {
            "machine": machine(args.device),
            "startup_s": median(speeds(startup, "startup_s")),
            "startup_runs": startup,
        }
        if args.sweep_jobs:
            launchers = {"basic": False, "joblib n_jobs=2": True}
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in launchers}
            for _ in range(args.sweep_repeats):
                for label, parallel in launchers.items():
                    runs[label].append(sweep_run(args, workdir, parallel))
            result["sweep"] = {
                label: {**{k: median(speeds(r, k)) for k in r[0]}, "runs": r}
                for label, r in runs.items()
            }
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
