"""The results table of a sweep (or any directory of runs): ``results.csv/.md/.png``.

Runs that differ only in ``seed`` are aggregated as mean ± std. Where an experiment records its
published figure (``expected: {metric, value, band | min, source}``) and the run used that
experiment's data and protocol, the table shows it and the difference. Debug runs
(fast_dev_run) are listed but left out of the table; jobs of the sweep's ``multirun.yaml`` that
never started are listed as "not started". An earlier report in the same directory is moved to
``.report_history/`` (the last few are kept) rather than replaced.
"""

from __future__ import annotations

import csv
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.report.compare import Comparison, compare
from cnnlab.report.runs import OPERATIONAL, Run, find_runs, not_started

METRIC_COLUMNS = ("train/acc", "val/acc", "val/acc_best", "test/acc", "wall_time_s")
REPORT_FILES = ("results.csv", "results.md", "results.png")
HISTORY_KEPT = 5


@dataclass
class Row:
    """A table row: one run, or the seeds of one configuration aggregated."""

    label: str
    swept: dict[str, str]
    runs: list[Run]
    values: dict[str, list[float]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        statuses = sorted({r.status for r in self.runs})
        return statuses[0] if len(statuses) == 1 else "/".join(statuses)

    def mean(self, key: str) -> float | None:
        values = self.values.get(key) or []
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        values = self.values.get(key) or []
        return statistics.stdev(values) if len(values) > 1 else None

    def fmt(self, key: str, digits: int = 4) -> str:
        mean = self.mean(key)
        if mean is None:
            return "-"
        std = self.std(key)
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    @property
    def comparison(self) -> Comparison:
        return compare(self.runs)


def build_rows(runs: list[Run], root: Path) -> tuple[list[Row], list[str]]:
    """Group runs that differ only in seed; return the rows and the swept keys."""
    keys = sorted({k for r in runs for k in r.overrides if not k.startswith(OPERATIONAL)})
    swept = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1 and k != "seed"]
    if "experiment" not in swept and len({r.experiment for r in runs}) > 1:
        swept.insert(0, "experiment")
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        key = tuple(_swept_value(run, k) for k in swept) if swept else (str(run.path),)
        groups.setdefault(key, []).append(run)
    rows = []
    for key, members in groups.items():
        values = dict(zip(swept, key, strict=True)) if swept else {}
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or _relative(members[0].path, root)
        row = Row(label=label, swept=values, runs=members)
        for column in (*METRIC_COLUMNS, "best_epoch"):
            done = [r for r in members if r.status == "completed"]
            row.values[column] = [v for r in done if (v := _value(r, column)) is not None]
        rows.append(row)
    return rows, swept


def _swept_value(run: Run, key: str) -> str:
    if key == "experiment":
        return run.experiment or "-"
    return run.overrides.get(key, "-")


def _value(run: Run, column: str) -> float | None:
    if column == "best_epoch":
        return float(run.best_epoch) if run.best_epoch is not None else None
    return run.value(column)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def write_report(root: Path) -> dict[str, Path]:
    """Write results.csv/.md/.png for the runs under ``root``; return the written paths."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; pass a sweep or run directory.")
    found = find_runs(root)
    if not found:
        raise ConfigError(
            f"No run directories under {root} (looked for */.hydra/config.yaml). Pass the "
            "directory of a sweep (outputs/multiruns/<date>/<time>) or of runs (outputs)."
        )
    runs = [r for r in found if not r.debug]
    debug = [r for r in found if r.debug]
    rows, swept = build_rows(runs, root) if runs else ([], [])
    missing = not_started(root, found)
    _archive_previous(root)
    return {
        "csv": _write_csv(root / "results.csv", runs, swept, root),
        "md": _write_markdown(root / "results.md", rows, swept, root, debug, missing),
        "png": _write_plot(root / "results.png", rows, swept, root),
    }


def _write_plot(path: Path, rows: list[Row], swept: list[str], root: Path) -> Path:
    """Train/val/test bars per row, ticks naming the swept values, published values marked."""
    from cnnlab.report.plots import Bar, grouped_bars

    bars = []
    for row in rows:
        comparison = row.comparison
        metric = comparison.metric.split("/")[0]
        published = {metric: comparison.published} if comparison.measured else {}
        if comparison.measured and (comparison.expected or {}).get("train") is not None:
            published["train"] = comparison.expected["train"]
        values = {k: (row.mean(f"{k}/acc"), row.std(f"{k}/acc")) for k in ("train", "val", "test")}
        bars.append(
            Bar(
                row.label + (f" (n={len(row.runs)})" if len(row.runs) > 1 else ""),
                values,
                published,
            )
        )
    varied = ", ".join(swept) if swept else "one bar per run"
    title = f"{root.name}: accuracy by {varied} (mean over seeds, whiskers: std)"
    return grouped_bars(path, bars, title)


def _archive_previous(root: Path) -> None:
    """Move the previous report into ``.report_history/<n>_<its time>/``; keep the last few."""
    existing = [root / name for name in REPORT_FILES if (root / name).exists()]
    if not existing:
        return
    history = root / ".report_history"
    older = sorted((p for p in history.glob("*") if p.is_dir()), key=_history_order)
    number = _history_order(older[-1])[0] + 1 if older else 1
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(existing[0].stat().st_mtime))
    target = history / f"{number:04d}_{stamp}"
    target.mkdir(parents=True)
    for path in existing:
        shutil.move(str(path), target / path.name)
    for old in older[: max(0, len(older) + 1 - HISTORY_KEPT)]:
        shutil.rmtree(old)


def _history_order(path: Path) -> tuple[int, str]:
    number, _, _ = path.name.partition("_")
    return (int(number) if number.isdigit() else 0), path.name


def _write_csv(path: Path, runs: list[Run], swept: list[str], root: Path) -> Path:
    columns = ["run", "tags", *swept, "seed", "status", "params", *METRIC_COLUMNS]
    columns += ["best_epoch", "expected_metric", "expected_value", "error"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for run in runs:
            expected = run.expected or {}
            error = str(run.metrics.get("error") or "")
            writer.writerow(
                {
                    "run": _relative(run.path, root),
                    "tags": ",".join(run.tags),
                    **{k: _swept_value(run, k) for k in swept},
                    "seed": run.seed,
                    "status": run.status,
                    "params": run.params if run.params is not None else "",
                    **{k: run.metrics.get(k, "") for k in METRIC_COLUMNS},
                    "best_epoch": run.best_epoch if run.best_epoch is not None else "",
                    "expected_metric": expected.get("metric", ""),
                    "expected_value": expected.get("value", ""),
                    "error": error.splitlines()[0][:300] if error else "",
                }
            )
    return path


def _write_markdown(
    path: Path,
    rows: list[Row],
    swept: list[str],
    root: Path,
    debug: list[Run],
    missing: list[str],
) -> Path:
    head = ["run", *swept, "n", "status", "params", "train acc", "val acc", "best val acc"]
    head += ["best epoch (1-based)", "test acc", "published", "Δ", "wall time (s)"]
    lines = [
        f"# Results: {root}",
        "",
        "Accuracies are fractions; `a ± b` is mean ± std over the completed seeds (n runs in "
        "the row). `train acc` is measured during the last training epoch, `val acc` at its "
        "end; `test acc` uses the best checkpoint. Δ = measured − published (✓ within the "
        "experiment's band), shown only for runs on the experiment's own data and protocol.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        comparison = row.comparison
        params = row.runs[0].params
        cells = [
            ", ".join(_relative(r.path, root) for r in row.runs)
            + "".join(f" `{t}`" for t in sorted({t for r in row.runs for t in r.tags})),
            *[row.swept.get(k, "-") for k in swept],
            str(len(row.runs)),
            row.status,
            f"{params:,}" if params is not None else "-",
            row.fmt("train/acc"),
            row.fmt("val/acc"),
            row.fmt("val/acc_best"),
            row.fmt("best_epoch", digits=0) if row.values.get("best_epoch") else "-",
            row.fmt("test/acc"),
            comparison.published_text(),
            comparison.delta_text(),
            row.fmt("wall_time_s", digits=1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    unfinished = [r for row in rows for r in row.runs if r.status != "completed"]
    if unfinished:
        lines += ["", "## Runs that did not complete (no published comparison)", ""]
        for run in unfinished:
            note = run.metrics.get("error") or _unfinished_note(run)
            lines.append(f"- `{_relative(run.path, root)}` ({run.status}): {note.splitlines()[0]}")
    if missing:
        lines += ["", "## Jobs of the sweep that never started", ""]
        lines += [f"- not started: `{job}`" for job in missing]
    if debug:
        lines += ["", "## Debug runs (fast_dev_run; left out of the table)", ""]
        lines += [f"- `{_relative(r.path, root)}`" for r in debug]
    path.write_text("\n".join(lines) + "\n")
    return path


def _unfinished_note(run: Run) -> str:
    if run.status == "incomplete":
        return "no metrics.json: killed before it started training"
    return f"stopped after epoch {run.epochs_done}; resume=true continues it"
