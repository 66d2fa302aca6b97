"""The reproduction results page: ``python -m cnnlab.report --paper <runs root>``.

Writes ``docs/RESULTS.md`` and its figures from the run directories under the root alone: one
table per source (:mod:`cnnlab.report.catalog`), seeds aggregated, each row against the
published figure where the run used the experiment's own data and protocol. Hand-written notes
live between ``<!-- notes:<key> -->`` and ``<!-- /notes:<key> -->`` in the page itself and are
carried over each time it is regenerated. Nothing in the output depends on the clock.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.report import plots
from cnnlab.report.catalog import (
    CIFAR2_STUDY,
    DATA_NEEDS,
    PARAMS_FIGURE,
    SECTIONS,
    Entry,
    Section,
    entry,
    experiment_config,
    published_variant,
)
from cnnlab.report.compare import Comparison, compare, data_note, is_published_variant, variant
from cnnlab.report.notes import GENERATED, notes_block, read_notes
from cnnlab.report.runs import UNFINISHED, Run, find_runs

HEAD = ["experiment", "params", "data", "seeds", "status", "train acc", "val acc", "test acc"]
HEAD += ["best val (epoch)", "published", "Δ (pts)", "band", "✓/✗", "wall time"]


class PaperRow:
    """The runs of one experiment (one variant of it), aggregated over seeds."""

    def __init__(self, name: str, runs: list[Run], item: Entry, why_none: str = "") -> None:
        self.name, self.entry, self.why_none = name, item, why_none
        self.runs = sorted(runs, key=lambda r: (_int(r.seed), str(r.path)))
        self.done = [r for r in self.runs if r.status == "completed"]
        self.comparison: Comparison = compare(self.runs)
        if not self.runs:
            reference = experiment_config(item.name) or {}
            self.comparison = Comparison(reference.get("expected"))

    def stat(self, key: str, digits: int = 4) -> str:
        values = [v for r in self.done if (v := r.value(key)) is not None]
        if not values:
            return "-"
        text = f"{statistics.fmean(values):.{digits}f}"
        return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    def cells(self) -> list[str]:
        c = self.comparison
        if not self.runs:
            needs = " and ".join(DATA_NEEDS[d] for d in self.entry.data)
            why = self.why_none or f"it needs {needs}"
            return (
                [f"`{self.name}`", "-", "-", "0", f"no run yet ({why})"]
                + ["-"] * 4
                + [c.published_text(), "-", c.band_text(), "", "-"]
            )
        params = next((r.params for r in self.runs if r.params is not None), None)
        delta = c.delta()
        if delta is not None:
            delta_text = f"{100 * delta[0]:+.2f}"
            delta_text += f" ± {100 * delta[1]:.2f}" if delta[1] is not None else ""
        else:
            delta_text = c.reason if c.reason and c.published is not None else "-"
        epochs = sorted(r.best_epoch for r in self.done if r.best_epoch is not None)
        best = self.stat("val/acc_best")
        if epochs:
            best += f" ({', '.join(map(str, epochs))})"
        return [
            f"`{self.name}`",
            f"{params:,}" if params is not None else "-",
            ", ".join(sorted({data_note(r) for r in self.runs})),
            str(len(self.done)),
            self.status(),
            self.stat("train/acc"),
            self.stat("val/acc"),
            self.stat("test/acc"),
            best,
            c.published_text(),
            delta_text,
            c.band_text(),
            c.verdict(),
            _duration([v for r in self.done if (v := r.value("wall_time_s")) is not None]),
        ]

    def status(self) -> str:
        parts = []
        for status in sorted({r.status for r in self.runs}):
            members = [r for r in self.runs if r.status == status]
            text = f"{len(members)} {status}"
            if status in UNFINISHED:
                max_epochs = members[0].config.get("trainer", {}).get("max_epochs")
                text += " at epoch " + ", ".join(
                    f"{r.epochs_done}/{max_epochs}" if max_epochs else str(r.epochs_done)
                    for r in members
                )
                last = [r.curves["val/acc"][-1] for r in members if r.curves.get("val/acc")]
                if last:
                    text += " (last val " + ", ".join(f"{v:.4f}" for v in last) + ")"
            parts.append(text)
        return "; ".join(parts)


def write_paper(root: Path, out: Path) -> Path:
    """Write the results page ``out`` (and its PNGs beside it) from the runs under ``root``."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ConfigError(
            f"{root} is not a directory; pass the root of the reproduction runs "
            "(e.g. outputs/reproduce)."
        )
    notes = read_notes(out)
    found = [r for r in find_runs(root) if not r.debug]
    rows_by_section = {s.key: _rows(s.entries, found) for s in SECTIONS}
    lines = [
        GENERATED,
        "# Reproduced results",
        "",
        f"Generated from the run directories under `{root}` by "
        f"`python -m cnnlab.report --paper {root}` (`make reproduce` runs the experiments and "
        "then this). Accuracies are fractions; `a ± b` is the mean ± std over the completed "
        "seeds (`seeds`). `train acc` is measured during the last training epoch, `val acc` at "
        "its end, `test acc` with the best checkpoint; best val gives the 1-based epoch of each "
        "seed. Δ = measured − published on the source's metric, in points; ✗ says by how much "
        "the mean lies outside the band. Runs that have not finished are shown with their "
        "state and epoch and are not compared; nor are runs whose data or protocol differs "
        "from the experiment's.",
        "",
        *notes_block("intro", notes),
    ]
    for section in SECTIONS:
        lines += _section(section, rows_by_section[section.key], out, notes)
    lines += _figures(rows_by_section, out)
    known = {e.name for s in SECTIONS for e in s.entries}
    others = [r for r in found if r.experiment not in known]
    if others:
        lines += ["## Other runs under the root (no source row)", ""]
        lines += [
            f"- `{r.path.relative_to(root)}`: experiment {r.experiment}, {r.status}" for r in others
        ]
        lines.append("")
    for key in sorted(set(notes) - {"intro", *(s.key for s in SECTIONS)}):
        lines += notes_block(key, notes)  # notes whose section is gone are kept, never lost
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip("\n") + "\n")
    return out


def _rows(entries: tuple[Entry, ...], runs: list[Run]) -> list[PaperRow]:
    rows = []
    for item in entries:
        mine = [r for r in runs if r.experiment == item.name]
        variants: dict[str, list[Run]] = {}
        for run in mine:
            label = ", ".join(f"{k}={v}" for k, v in variant(run).items())
            variants.setdefault(label, []).append(run)
        if not variants:
            rows.append(PaperRow(item.name, [], item))
        # the as-published run make reproduce adds has its row before it has a run
        published = published_variant(item.name)
        waiting = {}
        if variants and published and not any(is_published_variant(r, published) for r in mine):
            waiting = {", ".join(published): "make reproduce runs it"}
        for label in sorted({*variants, *waiting}):
            name = item.name + (f" ({label})" if label else "")
            rows.append(PaperRow(name, variants.get(label, []), item, waiting.get(label, "")))
    return rows


def _section(section: Section, rows: list[PaperRow], out: Path, notes: dict[str, str]) -> list[str]:
    key, title = section.key, section.title
    lines = [
        f"## {title}",
        "",
        section.setup,
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    failed = [r for row in rows for r in row.runs if r.status == "failed"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [
            f"- `{r.path.name}` of `{r.experiment}`: "
            f"{(str(r.metrics.get('error') or '') or 'no message').splitlines()[0][:200]}"
            for r in failed
        ]
    commands = [row.runs[0].command() for row in rows if row.runs]
    if commands:
        lines += [
            "",
            "Commands (first seed of each row; the other seeds differ only in "
            "`seed=` and the run directory):",
            "",
            "```bash",
            *commands,
            "```",
        ]
    panels = [
        plots.Curves(
            row.name,
            [r.curves["val/acc"] for r in row.runs if r.curves.get("val/acc")],
            row.comparison.published if row.comparison.metric == "val/acc" else None,
            row.runs[0].config.get("trainer", {}).get("max_epochs"),
        )
        for row in rows
        if any(r.curves.get("val/acc") for r in row.runs)
    ]
    if panels:
        name = f"results_curves_{key}.png"
        plots.curves_figure(out.parent / name, panels, f"{title}: validation accuracy per epoch")
        lines += ["", f"![{title}: learning curves]({name})"]
    return [*lines, "", *notes_block(key, notes)]


def _figures(rows_by_section: dict[str, list[PaperRow]], out: Path) -> list[str]:
    rows = {r.name: r for section in rows_by_section.values() for r in section}
    lines = ["## Figures in the sources' forms", ""]
    study = [rows[n] for n in CIFAR2_STUDY if n in rows and rows[n].comparison.measured]
    if study:
        bars = []
        for row in study:
            expected = row.comparison.expected or {}
            values = {k: _mean_std(row.done, f"{k}/acc") for k in ("train", "val")}
            label = f"{row.name.removeprefix('dlwpt_')} (n={len(row.done)})"
            bars.append(
                plots.Bar(
                    label, values, {"train": expected.get("train"), "val": expected.get("value")}
                )
            )
        plots.grouped_bars(
            out.parent / "results_cifar2_study.png",
            bars,
            "DLWPT ch. 8 on CIFAR-2: train and val accuracy (published: black)",
        )
        lines += ["![DLWPT's CIFAR-2 study](results_cifar2_study.png)", ""]
    panels = {}
    for title, names in PARAMS_FIGURE.items():
        points = []
        for name in names:
            row = rows.get(name)
            params = next((r.params for r in row.runs if r.params), None) if row else None
            if row is None or params is None or not row.comparison.measured:
                continue
            c = row.comparison
            item = entry(name)
            points.append(
                plots.Point(
                    name,
                    params,
                    statistics.fmean(c.measured),
                    c.published,
                    item.kind if item else "cnn",
                )
            )
        if points:
            panels[title] = points
    if panels:
        plots.params_figure(
            out.parent / "results_params.png",
            panels,
            "MLP vs CNN: accuracy against parameter count",
        )
        lines += ["![MLP vs CNN: accuracy against parameters](results_params.png)", ""]
    if len(lines) == 2:
        lines += ["(No completed runs of these experiments yet.)", ""]
    return lines


def _mean_std(runs: list[Run], key: str) -> tuple[float | None, float | None]:
    values = [v for r in runs if (v := r.value(key)) is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _duration(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    mean = statistics.fmean(seconds)
    if mean < 120:
        return f"{mean:.0f} s"
    return f"{mean / 60:.0f} min" if mean < 7200 else f"{mean / 3600:.1f} h"


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 0
