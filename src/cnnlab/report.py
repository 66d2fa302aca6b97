"""Collect runs into a results table and plot: ``python -m cnnlab.report <sweep or outputs dir>``.

Reads run directories only (``.hydra/`` config and overrides + ``metrics.json``) and writes
``results.csv``, ``results.md`` and ``results.png`` into the given directory. Runs that differ
only in ``seed`` are aggregated as mean ± std. Where an experiment records its published figure
(``expected: {metric, value, band | min, source}``), the table shows it and the difference.
An earlier report in the same directory is moved to ``.report_history/`` rather than replaced.
"""

from __future__ import annotations

import csv
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnnlab.cli import run_cli
from cnnlab.errors import ConfigError
from cnnlab.rundir import read_metrics

METRIC_COLUMNS = ("train/acc", "val/acc", "val/acc_best", "test/acc", "best_epoch", "wall_time_s")
REPORT_FILES = ("results.csv", "results.md", "results.png")
# Overrides that say how a run was executed, not what was trained: never "swept" columns.
OPERATIONAL = (
    "resume",
    "torch_threads",
    "ckpt_path",
    "paths.",
    "callbacks.progress_bar",
    "trainer.max_time",
    "hydra",
)


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    overrides: dict[str, str]
    choices: dict[str, str]
    metrics: dict[str, Any]
    expected: dict[str, Any] | None
    params: int | None = None
    tags: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        status = self.metrics.get("status", "incomplete")
        return "incomplete" if status == "running" else status


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


def find_runs(root: Path) -> list[Run]:
    """Every run directory (one with ``.hydra/config.yaml``) under ``root``, in path order."""
    runs = []
    for config in sorted(root.rglob(".hydra/config.yaml"), key=_natural_key):
        run_dir = config.parent.parent
        cfg = OmegaConf.load(config)
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        hydra_file = run_dir / ".hydra" / "hydra.yaml"
        choices: dict[str, str] = {}
        if hydra_file.is_file():
            hydra_cfg = OmegaConf.load(hydra_file)
            raw = OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default={}) or {}
            choices = {k: str(v) for k, v in raw.items() if not k.startswith("hydra")}
        metrics = read_metrics(run_dir) or {}
        expected = cfg.get("expected")
        runs.append(
            Run(
                path=run_dir,
                overrides=dict(_split_override(o) for o in overrides),
                choices=choices,
                metrics=metrics,
                expected=OmegaConf.to_container(expected) if expected is not None else None,
                params=metrics.get("params"),
                tags=[str(t) for t in cfg.get("tags") or []],
            )
        )
    return runs


def _natural_key(path: Path) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in path.parts]


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def build_rows(runs: list[Run], root: Path) -> tuple[list[Row], list[str]]:
    """Group runs that differ only in seed; return the rows and the swept keys."""
    keys = sorted({k for r in runs for k in r.overrides if not k.startswith(OPERATIONAL)})
    swept = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1 and k != "seed"]
    if "experiment" not in swept and len({r.choices.get("experiment") for r in runs}) > 1:
        swept.insert(0, "experiment")
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        key = tuple(_swept_value(run, k) for k in swept) if swept else (str(run.path),)
        groups.setdefault(key, []).append(run)
    rows = []
    for key, members in groups.items():
        values = dict(zip(swept, key, strict=False)) if swept else {}
        label = ", ".join(f"{v}" for v in values.values()) or _relative(members[0].path, root)
        row = Row(label=label, swept=values, runs=members)
        for column in (*METRIC_COLUMNS, "published_delta"):
            row.values[column] = [
                v for r in members if (v := _value(r, column)) is not None and math.isfinite(v)
            ]
        rows.append(row)
    return rows, swept


def _swept_value(run: Run, key: str) -> str:
    if key == "experiment":
        return run.overrides.get(key) or run.choices.get("experiment", "-")
    return run.overrides.get(key, "-")


def _value(run: Run, column: str) -> float | None:
    if column == "published_delta":
        if not run.expected or run.status != "completed":
            return None
        measured = run.metrics.get(run.expected.get("metric", ""))
        published = run.expected.get("value")
        return None if measured is None or published is None else measured - published
    value = run.metrics.get(column)
    return float(value) if isinstance(value, (int, float)) else None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _fmt(row: Row, key: str, digits: int = 4, signed: bool = False) -> str:
    mean = row.mean(key)
    if mean is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    std = row.std(key)
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _published(row: Row) -> tuple[str, str]:
    expected = row.runs[0].expected
    if not expected or expected.get("value") is None:
        return "-", "-"
    published = f"{expected['value']:.4f} ({expected.get('metric', '?')})"
    if expected.get("train") is not None:
        published = f"train {expected['train']:.2f}, {published}"
    delta = row.mean("published_delta")
    if delta is None:
        return published, "-"
    measured = delta + expected["value"]
    band, minimum = expected.get("band"), expected.get("min")
    ok = (band is None or abs(delta) <= band) and (minimum is None or measured >= minimum)
    verdict = "" if band is None and minimum is None else (" ✓" if ok else " ✗")
    return published, f"{_fmt(row, 'published_delta', signed=True)}{verdict}"


def write_report(root: Path) -> dict[str, Path]:
    """Write results.csv/.md/.png for the runs under ``root``; return the written paths."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; pass a sweep or run directory.")
    runs = find_runs(root)
    if not runs:
        raise ConfigError(
            f"No run directories under {root} (looked for */.hydra/config.yaml). Pass the "
            "directory of a sweep (outputs/multiruns/<date>/<time>) or of runs (outputs)."
        )
    rows, swept = build_rows(runs, root)
    _archive_previous(root)
    paths = {
        "csv": _write_csv(root / "results.csv", runs, swept, root),
        "md": _write_markdown(root / "results.md", rows, swept, root),
        "png": _write_plot(root / "results.png", rows),
    }
    return paths


def _archive_previous(root: Path) -> None:
    existing = [root / name for name in REPORT_FILES if (root / name).exists()]
    if not existing:
        return
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(existing[0].stat().st_mtime))
    history = root / ".report_history" / stamp
    n = 1
    while history.exists():
        history = root / ".report_history" / f"{stamp}-{n}"
        n += 1
    history.mkdir(parents=True)
    for path in existing:
        shutil.move(str(path), history / path.name)


def _write_csv(path: Path, runs: list[Run], swept: list[str], root: Path) -> Path:
    columns = [
        "run",
        "tags",
        *swept,
        "seed",
        "status",
        "params",
        *METRIC_COLUMNS,
        "expected_metric",
        "expected_value",
        "error",
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for run in runs:
            expected = run.expected or {}
            writer.writerow(
                {
                    "run": _relative(run.path, root),
                    "tags": ",".join(run.tags),
                    **{k: _swept_value(run, k) for k in swept},
                    "seed": run.overrides.get("seed", ""),
                    "status": run.status,
                    "params": run.params if run.params is not None else "",
                    **{k: run.metrics.get(k, "") for k in METRIC_COLUMNS},
                    "expected_metric": expected.get("metric", ""),
                    "expected_value": expected.get("value", ""),
                    "error": (run.metrics.get("error") or "").splitlines()[0][:300]
                    if run.metrics.get("error")
                    else "",
                }
            )
    return path


def _write_markdown(path: Path, rows: list[Row], swept: list[str], root: Path) -> Path:
    head = [
        "run",
        *swept,
        "n",
        "status",
        "params",
        "train acc",
        "val acc",
        "best val acc",
        "best epoch",
        "test acc",
        "published",
        "Δ",
        "wall time (s)",
    ]
    lines = [
        f"# Results: {root}",
        "",
        "Accuracies are fractions; `a ± b` is mean ± std over seeds. `train acc` is measured "
        "during the last training epoch, `val acc` at its end; `test acc` uses the best "
        "checkpoint. Δ = measured − published (✓ within the experiment's band).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        published, delta = _published(row)
        params = row.runs[0].params
        cells = [
            ", ".join(_relative(r.path, root) for r in row.runs)
            + "".join(f" `{t}`" for t in sorted({t for r in row.runs for t in r.tags})),
            *[row.swept.get(k, "-") for k in swept],
            str(len(row.runs)),
            row.status,
            f"{params:,}" if params is not None else "-",
            _fmt(row, "train/acc"),
            _fmt(row, "val/acc"),
            _fmt(row, "val/acc_best"),
            _fmt(row, "best_epoch", digits=1),
            _fmt(row, "test/acc"),
            published,
            delta,
            _fmt(row, "wall_time_s", digits=1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for row in rows for r in row.runs if r.status != "completed"]
    if failed:
        lines += ["", "## Runs that did not complete (no published comparison)", ""]
        for run in failed:
            error = run.metrics.get("error") or "no metrics.json: killed or still running"
            lines.append(f"- `{_relative(run.path, root)}` ({run.status}): {error.splitlines()[0]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_plot(path: Path, rows: list[Row]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row.label for row in rows]
    train = [row.mean("train/acc") or 0.0 for row in rows]
    val = [row.mean("val/acc") or 0.0 for row in rows]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    ax.bar(
        [x - width / 2 for x in xs],
        train,
        width,
        label="train",
        color="#4c72b0",
        yerr=[row.std("train/acc") or 0 for row in rows],
    )
    ax.bar(
        [x + width / 2 for x in xs],
        val,
        width,
        label="val",
        color="#dd8452",
        yerr=[row.std("val/acc") or 0 for row in rows],
    )
    published = [
        (x, (row.runs[0].expected or {}).get("value")) for x, row in zip(xs, rows, strict=True)
    ]
    published = [(x, v) for x, v in published if v is not None]
    if published:
        ax.scatter(
            [x + width / 2 for x, _ in published],
            [v for _, v in published],
            marker="_",
            s=400,
            color="black",
            zorder=3,
            label="published",
        )
    lowest = min([v for v in (*train, *val) if v > 0], default=0.0)
    ax.set_ylim(max(0.0, lowest - 0.1), 1.0)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(argv: list[str]) -> dict[str, Path]:
    """CLI: one argument, the directory to report on (default ``outputs``)."""
    root = Path(argv[0]) if argv else Path("outputs")
    paths = write_report(root)
    print(paths["md"].read_text())
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return paths


def main() -> None:
    run_cli(report)


if __name__ == "__main__":
    main()
