#!/usr/bin/env python
"""Wall time of a whole sweep, its jobs one after another against side by side.

``python scripts/bench_sweep.py [--data DIR] [--epochs 3] [--launchers basic,parallel,joblib]
[--jobs N] [--repeats 1] [--json FILE] [--dry-run]``.

Each launcher runs the DLWPT CIFAR-2 study (``sweep=cifar2_study``, 8 rows) as a user launches
it, ``python -m cnnlab.train sweep=cifar2_study trainer.max_epochs=E ...``:

* ``basic``: Hydra's basic launcher, one job after another, each with every core
  (``torch_threads`` = the cores);
* ``parallel``: ``hydra/launcher=parallel``, ``--jobs`` jobs at a time (default: one per core),
  each a fork of the launching process with ``cores / jobs`` threads, the cores of ended jobs
  passed on once none is left to start;
* ``joblib``: ``hydra/launcher=joblib``, the same jobs and threads in loky worker processes.

It reports each launcher's wall time (median over ``--repeats`` rounds, launchers alternated),
the jobs' own training seconds (``wall_time_s``) and the speed-up: basic's wall time / each
launcher's. ``--data DIR`` reads the CIFAR-10 JPEG copy under DIR (``data=cifar10_jpeg``,
airplane vs bird); without it, synthetic CIFAR-2-shaped data (10,000 training images).
``--tiny``: two rows, synthetic data, one epoch of two batches (for the tests); ``--dry-run``
prints each launcher's command and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench_common import ROOT, loadavg, machine, markdown_table, median
from cnnlab.cluster import allocated_cpus

LAUNCHERS = ("basic", "parallel", "joblib")
CIFAR2 = ["data.classes=[airplane,bird]", "data.class_names=[airplane,bird]"]
SYNTHETIC = [
    "data=synthetic",
    "data.image_size=32",
    "data.in_channels=3",
    "data.class_names=${class_range:2}",
]


def sweep_overrides(args: argparse.Namespace) -> list[str]:
    """The study's command line, less the launcher and the sweep directory."""
    if args.data is not None:
        data = ["data=cifar10_jpeg", f"paths.data_dir={args.data}", *CIFAR2]
    else:
        size = [64, 64] if args.tiny else [10000, 2000]
        data = [*SYNTHETIC, f"data.num_train={size[0]}", f"data.num_test={size[1]}"]
    limits = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
    tiny = [f"trainer.{limit}=2" for limit in limits] if args.tiny else []
    rows = [f"hydra.sweeper.params.experiment='{','.join(args.rows)}'"] if args.rows else []
    return [
        "sweep=cifar2_study",
        *rows,
        *data,
        f"trainer.max_epochs={args.epochs}",
        *tiny,
        "callbacks.progress_bar=null",
        "print_config=false",
    ]


def launcher_overrides(launcher: str, jobs: int, cores: int) -> list[str]:
    """``basic``: all cores per job; otherwise ``jobs`` at a time with cores / jobs threads."""
    if launcher == "basic":
        return ["hydra/launcher=basic", f"torch_threads={cores}"]
    return [f"hydra/launcher={launcher}", f"hydra.launcher.n_jobs={jobs}", "torch_threads=auto"]


def command(args: argparse.Namespace, launcher: str) -> list[str]:
    """``python -m cnnlab.train`` with the study and ``launcher`` (the sweep directory apart)."""
    launcher_args = launcher_overrides(launcher, args.jobs, args.cores)
    return [sys.executable, "-m", "cnnlab.train", *sweep_overrides(args), *launcher_args]


def sweep_run(args: argparse.Namespace, launcher: str, workdir: Path) -> dict[str, Any]:
    """One sweep with ``launcher``: wall seconds, and each job's row and training seconds."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sweep_dir = Path(tmp) / "sweep"
        load = loadavg()
        started = time.perf_counter()
        argv = [*command(args, launcher), f"hydra.sweep.dir={sweep_dir}"]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{launcher} sweep failed:\n{done.stderr[-3000:]}")
        jobs = [_job(d) for d in sorted(sweep_dir.iterdir(), key=_job_number) if d.name.isdigit()]
    return {
        "wall_s": wall,
        "train_s": sum(j["wall_time_s"] for j in jobs),
        "loadavg_before": load,
        "jobs": jobs,
    }


def _job_number(path: Path) -> int:
    return int(path.name) if path.name.isdigit() else -1


def _job(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    environment = json.loads((run_dir / "environment.json").read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    row = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "")
    return {
        "row": row,
        "wall_time_s": metrics["wall_time_s"],
        "val/acc_best": metrics["val/acc_best"],
        "threads": environment["cpu_threads"],
    }


def table(result: dict[str, Any]) -> str:
    """The markdown report printed at the end (the same numbers as the JSON file)."""
    m, runs = result["machine"], result["launchers"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; "
        f"{result['jobs']} jobs at a time for parallel/joblib; {result['rows']} rows x "
        f"{result['epochs']} epochs",
        "",
    ]
    header = ["launcher", "threads/job", "wall s", "jobs' training s", "speed-up vs basic"]
    rows = [
        [
            name,
            str(run["runs"][0]["jobs"][0]["threads"]),
            f"{run['wall_s']:.1f}",
            f"{run['train_s']:.1f}",
            f"{result['speedup'].get(name, float('nan')):.2f}",
        ]
        for name, run in runs.items()
    ]
    return "\n".join(lines + markdown_table(header, rows))


def parse_args(argv: list[str] | None) -> argparse.Namespace:

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="folder holding cifar10-jpeg/")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--launchers", default=",".join(LAUNCHERS), help="comma-separated")
    cores = allocated_cpus()
    p.add_argument("--jobs", type=int, default=cores, help="jobs at a time (default: cores)")
    p.add_argument("--rows", default=None, help="experiments to sweep (default: the study's)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all launchers (median)")
    p.add_argument("--tiny", action="store_true", help="2 rows, synthetic data, 2 batches")
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    p.add_argument("--workdir", type=Path, default=None, help="sweep directories (default: tmp)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    args.cores = cores or 1
    args.data = args.data.resolve() if args.data else None  # the sweeps run in the checkout
    args.launchers = [name for name in args.launchers.split(",") if name]
    if unknown := set(args.launchers) - set(LAUNCHERS):
        p.error(f"unknown launcher(s) {sorted(unknown)}; choose from {LAUNCHERS}")
    if args.tiny:
        args.epochs, args.data = 1, None
        args.rows = args.rows or "dlwpt_net,dlwpt_width"
    args.rows = args.rows.split(",") if args.rows else None
    if args.epochs < 1 or args.jobs < 1 or args.repeats < 1:
        p.error("--epochs, --jobs and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.dry_run:
        commands = {name: command(args, name) for name in args.launchers}
        print("\n".join(shlex.join(c) for c in commands.values()))
        return {"commands": commands}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.launchers}
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-sweep-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(args.repeats):
            for name in args.launchers:
                runs[name].append(sweep_run(args, name, workdir))
    launchers = {
        name: {
            "wall_s": median([r["wall_s"] for r in rs]),
            "train_s": median([r["train_s"] for r in rs]),
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    basic = launchers.get("basic")
    result: dict[str, Any] = {
        "machine": machine("cpu"),
        "command": ["python", "-m", "cnnlab.train", *sweep_overrides(args)],
        "rows": len(next(iter(runs.values()))[0]["jobs"]),
        "epochs": args.epochs,
        "jobs": args.jobs,
        "launchers": launchers,
        "speedup": {
            name: basic["wall_s"] / run["wall_s"] for name, run in launchers.items() if basic
        },
    }
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
