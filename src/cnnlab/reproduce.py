"""Rerun the sources' experiments whose data is present, then write the results page.

``python -m cnnlab.reproduce [DATA] [--seeds N] [key=value ...]`` (``make reproduce``): one
process per run, each in ``<out>/<experiment>/seed_<seed>/`` (seeds: the experiment's own, then
+1, +2, ...). Experiments whose data is missing are skipped with one line saying what is missing.
Rerunning continues where it stopped: completed runs are skipped, killed or failed ones resume
(``resume=true``), new ones start. At the end the page (docs/RESULTS.md) is regenerated.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
from pathlib import Path

from cnnlab.cli import run_cli
from cnnlab.cluster import allocated_cpus, parallel_jobs
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.report.catalog import entries, experiment_config, plan, published_variant
from cnnlab.report.records import check_folders, completed_record, keep_records, record_of
from cnnlab.report.runs import process_alive
from cnnlab.rundir import read_metrics
from cnnlab.thread_share import run_side_by_side

# The 100-block residual net costs ~10x the others; it gets a training-time budget per call
# (rerunning continues it from its last epoch).
TIME_BUDGET = {"dlwpt_res_deep": "00:01:00:00"}
_DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")


def seconds(duration: str) -> int:
    """``DD:HH:MM:SS`` (Lightning's ``max_time`` string) in seconds."""
    match = _DURATION.fullmatch(duration)
    days, hours, minutes, secs = map(int, match.groups()) if match else (0, 24, 60, 60)
    total = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if hours > 23 or minutes > 59 or secs > 59 or total == 0:  # (zero never trains)
        raise ConfigError(
            f"--res-deep-time={duration!r} is not a duration DD:HH:MM:SS; e.g. 00:01:30:00 "
            "for 90 minutes."
        )
    return total


def duration(total: float) -> str:
    """``total`` seconds as ``DD:HH:MM:SS``, rounded up."""
    minutes, secs = divmod(math.ceil(total), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def time_budget(run_dir: Path, per_call: str) -> str:
    """``trainer.max_time`` that gives ``run_dir`` ``per_call`` more training time.

    ``max_time`` counts the training time of every call (its timer is saved in the checkpoint),
    so a resumed run's budget is the time it has trained so far plus this call's share.
    """
    from cnnlab.checkpoint import read_checkpoint

    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        timer = read_checkpoint(last).get("callbacks", {}).get("Timer", {})
    except CheckpointError:  # none yet, or unreadable: the run's own resume says which
        timer = {}
    return duration(timer.get("time_elapsed", {}).get("train", 0.0) + seconds(per_call))


def run_state(run_dir: Path) -> str:
    """``done``, ``busy`` (a process holds it), ``resume`` (it has metrics) or ``start``."""
    metrics = read_metrics(run_dir)
    if metrics and metrics.get("status") == "completed":
        return "done"
    if run_dir.is_dir() and process_alive(run_dir, metrics or {}):
        return "busy"
    return "resume" if metrics is not None else "start"


def commands(args: argparse.Namespace) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The runs to launch (state, argv) in order, and one line per experiment left out."""
    selected = [e for e in entries() if not args.only or e.name in args.only]
    # Seed-major, so that every row gets its first seed before any gets its second; the slow
    # residual net last.
    selected.sort(key=lambda e: e.name in TIME_BUDGET)
    todo, notes = [], []
    launch: list[tuple[str, list[str]]] = []
    for item in selected:
        overrides, missing = plan(item.name, item.data, args.data)
        if missing:
            notes.append(f"skip {item.name}: {missing}")
            continue
        todo.append((item.name, overrides, args.out / item.name, []))
        # a second run measured as the published figure was (its overrides last: they win)
        if published := published_variant(item.name):
            todo.append((item.name, overrides, args.out / item.name / "as_published", published))
    threads = [f"torch_threads={args.threads}"] if args.threads else []
    for i in range(args.seeds):
        for name, overrides, root, published in todo:
            seed = experiment_config(name)["seed"] + i
            run_dir = root / f"seed_{seed}"
            state = run_state(run_dir)
            trained = [f"experiment={name}", f"seed={seed}", *overrides, *args.overrides]
            record = args.records and record_of(run_dir, args.out, args.records)
            if state in ("resume", "start") and record:
                state = "recorded" if completed_record(record, trained + published) else state
            if state in ("done", "busy", "recorded"):
                why = {"done": "completed", "busy": "another process is training in it",
                       "recorded": f"its record in {args.records} is completed"}[state]  # fmt: skip
                notes.append(f"skip {run_dir}: {why}")
                continue
            budget = []
            if name in TIME_BUDGET:
                budget = [f"++trainer.max_time={time_budget(run_dir, args.res_deep_time)}"]
            argv = [
                sys.executable,
                "-m",
                "cnnlab.train",
                f"experiment={name}",
                f"seed={seed}",
                *threads,
                "callbacks.progress_bar.refresh_rate=0",
                *overrides,
                *budget,
                *args.overrides,
                *published,
                f"hydra.run.dir={run_dir}",
            ]
            launch.append((state, argv + (["resume=true"] if state == "resume" else [])))
    return launch, notes


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cnnlab.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="DATA | key=value",
        help="the folder holding the datasets (default: $CNNLAB_DATA or data; "
        "paths.data_dir=DIR works too), and overrides passed to every run",
    )
    parser.add_argument("--data", type=Path, help="the folder holding the datasets")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds per experiment: its own seed, then +1, +2, ... (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/reproduce"),
        help="root of the run directories (default: outputs/reproduce)",
    )
    parser.add_argument(
        "--page",
        type=Path,
        default=Path("docs/RESULTS.md"),
        help="the results page written at the end (default: docs/RESULTS.md)",
    )
    parser.add_argument(
        "--records",
        type=Path,
        help="also keep each ended run's record (all but its checkpoints) in this folder, skip "
        "the runs it holds as completed, and write the page from it (cnnlab's own: docs/runs)",
    )
    parser.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="only these experiments")
    parser.add_argument(
        "--jobs",
        type=int,
        default=parallel_jobs("auto"),
        help="runs side by side, each with cores / jobs threads, the cores of ended runs "
        "passed on once none is left to start (default: one per core, %(default)s here; "
        "README, Sweeps)",
    )
    parser.add_argument(
        "--res-deep-time",
        default=TIME_BUDGET["dlwpt_res_deep"],
        help="training time per call for dlwpt_res_deep, DD:HH:MM:SS (default %(default)s)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would run and what is skipped; run nothing",
    )
    args = parser.parse_intermixed_args(argv)
    if args.only:  # --only takes every word after it: hand overrides and folders back
        other = [a for a in args.only if "=" in a or Path(a).is_dir()]
        args.args += other
        args.only = [a for a in args.only if a not in other]
    seconds(args.res_deep_time)  # refused here, before any work
    args.overrides = [a for a in args.args if "=" in a and not a.startswith("paths.data_dir=")]
    dirs = [a for a in args.args if "=" not in a]
    dirs += [a.split("=", 1)[1] for a in args.args if a.startswith("paths.data_dir=")]
    if len(dirs) + (args.data is not None) > 1:
        raise ConfigError(f"Give the data folder once (got {[*dirs, args.data or '']}).")
    args.data = Path(args.data or (dirs[0] if dirs else os.environ.get("CNNLAB_DATA", "data")))
    if not args.data.is_dir():
        raise ConfigError(
            f"The data folder {args.data} does not exist. Point DATA=... (make), "
            "--data, CNNLAB_DATA or paths.data_dir=... at the folder holding the "
            "datasets (e.g. cifar10-jpeg/, mnist/, celeba/, PetImages/)."
        )
    if args.seeds < 1 or args.jobs < 1:
        raise ConfigError(f"--seeds and --jobs must be at least 1 (got {args.seeds}, {args.jobs}).")
    unknown = sorted(set(args.only or []) - {e.name for e in entries()})
    if unknown:
        raise ConfigError(
            f"Unknown experiment(s) for --only: {', '.join(unknown)}; choose from "
            f"{', '.join(e.name for e in entries())}."
        )
    if args.records:
        check_folders(args.out, args.records, out_must_exist=False)
    # cores / jobs threads a run (shared on, see thread_share), unless the command sets them
    given = any(o.startswith("torch_threads=") for o in args.overrides)
    args.threads = None if given else max(1, allocated_cpus() // args.jobs)
    return args


def reproduce(argv: list[str]) -> int:
    """Run what is left to run; return the exit status (1 if a run failed)."""
    from cnnlab.report.notes import read_notes
    from cnnlab.report.paper import write_paper

    args = _parse(argv)
    read_notes(args.page)  # refuses a page it did not write, before any training
    launch, notes = commands(args)
    for line in notes:
        print(line, flush=True)
    for state, argv_ in launch:
        print(f"{state}: {shlex.join(['python', *argv_[1:]])}", flush=True)
    records = f" --records {args.records}" if args.records else ""
    if args.dry_run:
        print(f"then: python -m cnnlab.report --paper {args.out}{records} --out {args.page}")
        return 0
    codes = run_side_by_side([argv_ for _, argv_ in launch], args.jobs, args.threads)
    failed = [shlex.join(a[4:6]) for (_, a), code in zip(launch, codes, strict=True) if code]
    if args.records and args.out.is_dir():
        for line in keep_records(args.out, args.records):
            print(line)
    if (source := args.records or args.out).is_dir():
        print(f"results page: {write_paper(source, args.page)}")
    else:
        print(f"no runs under {source}: the results page {args.page} is left as it is")
    print(
        f"{len(launch) - len(failed)} of {len(launch)} runs ended without error"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def main() -> None:
    status = 0

    def _run(argv: list[str]) -> None:
        nonlocal status
        status = reproduce(argv)

    run_cli(_run, own_help=True)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
