"""``python -m cnnlab.report``: a sweep's results table, or the reproduction results page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cnnlab.cli import run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cnnlab.report",
        description="Collect run directories into a results table. With a sweep (or any) "
        "directory: write results.csv, results.md and results.png into it. With --paper: "
        "write the reproduction results page (docs/RESULTS.md and its figures) from the runs "
        "under the given root, keeping the page's hand-written notes.",
    )
    parser.add_argument(
        "dir",
        nargs="?",
        default=os.environ.get("CNNLAB_OUTPUTS", "outputs"),
        type=Path,
        help="sweep or runs directory (default: $CNNLAB_OUTPUTS or outputs, as paths.log_dir), "
        "or with --paper the "
        "root of the reproduction runs (e.g. outputs/reproduce)",
    )
    parser.add_argument(
        "--paper", action="store_true", help="write the results page of the sources' experiments"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/RESULTS.md"),
        help="with --paper: the page to write (default: docs/RESULTS.md)",
    )
    parser.add_argument(
        "--records",
        type=Path,
        help="with --paper: first keep the record (all but its checkpoints) of each ended run "
        "under DIR in this folder, then write the page from the records (cnnlab's own page: "
        "docs/runs)",
    )
    return parser


def report(argv: list[str]) -> dict[str, Path]:
    """Parse ``argv`` and write the report; return the written paths."""
    from cnnlab.errors import ConfigError
    from cnnlab.report.paper import write_paper
    from cnnlab.report.records import keep_records
    from cnnlab.report.sweep import write_report

    args = _parser().parse_args(argv)
    if args.records and not args.paper:
        raise ConfigError("--records goes with --paper (the results page); add --paper.")
    if args.paper:
        if args.records:
            for line in keep_records(args.dir, args.records):
                print(line)
        page = write_paper(args.records or args.dir, args.out)
        print(f"results page: {page}")
        return {"md": page}
    paths = write_report(args.dir)
    print(paths["md"].read_text())
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return paths


def main() -> None:
    run_cli(report, own_help=True)
