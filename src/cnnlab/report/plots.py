"""The report's figures, as PNGs that are byte-identical when drawn twice from the same runs.

Matplotlib's Agg renderer is deterministic; the only varying bytes a PNG would carry are its
metadata, which :func:`_save` drops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAIN, VAL, TEST = "#4c72b0", "#dd8452", "#55a868"


@dataclass
class Bar:
    """One group of bars: a label and mean/std per series (train, val, test)."""

    label: str
    values: dict[str, tuple[float | None, float | None]]
    published: dict[str, float | None]


@dataclass
class Point:
    """One net on the accuracy-against-parameters figure."""

    label: str
    params: int
    measured: float | None
    published: float | None
    kind: str


@dataclass
class Curves:
    """One experiment's per-epoch validation accuracy, one list per seed."""

    title: str
    seeds: list[list[float]]
    published: float | None
    max_epochs: int | None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "svg.hashsalt": "cnnlab"})
    return plt


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return path


def grouped_bars(path: Path, bars: Sequence[Bar], title: str, ylabel: str = "accuracy") -> Path:
    """Train/val(/test) bars per group, published values as black ticks; legend above the axes."""
    plt = _pyplot()
    series = [s for s in ("train", "val", "test") if any(b.values.get(s, (None,))[0] for b in bars)]
    colors = {"train": TRAIN, "val": VAL, "test": TEST}
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(bars) * max(1, len(series)) / 2 + 3), 4.8))
    shown = []
    for i, name in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        xs = [x + offset for x in range(len(bars))]
        means = [b.values.get(name, (None, None))[0] or 0.0 for b in bars]
        stds = [b.values.get(name, (None, None))[1] or 0.0 for b in bars]
        ax.bar(
            xs,
            means,
            width,
            yerr=stds,
            label=name,
            color=colors[name],
            error_kw={"ecolor": "0.35", "elinewidth": 1, "capsize": 0},
        )
        shown += [m for m in means if m > 0]
        published = [(x, b.published.get(name)) for x, b in zip(xs, bars, strict=True)]
        published = [(x, v) for x, v in published if v is not None]
        if published:
            ax.scatter(
                *zip(*published, strict=True),
                marker="_",
                s=400,
                color="black",
                linewidths=2.5,
                zorder=3,
            )
            shown += [v for _, v in published]
    if any(v is not None for b in bars for v in b.published.values()):
        ax.scatter([], [], marker="_", s=400, color="black", linewidths=2.5, label="published")
    low = min(shown, default=0.0)
    ax.set_ylim(max(0.0, math.floor((low - 0.05) * 20) / 20), 1.0)
    ax.set_xticks(list(range(len(bars))))
    ax.set_xticklabels([b.label for b in bars], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.07), ncol=4, frameon=False)
    return _save(fig, path)


def params_figure(path: Path, panels: dict[str, list[Point]], title: str) -> Path:
    """Accuracy against parameter count (log scale), MLPs as circles and CNNs as triangles."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items(), strict=True):
        for point in points:
            marker = "o" if point.kind == "mlp" else "^"
            color = TRAIN if point.kind == "mlp" else VAL
            if point.published is not None:
                ax.scatter(
                    point.params,
                    point.published,
                    marker=marker,
                    s=60,
                    zorder=2,
                    facecolors="none",
                    edgecolors="black",
                )
            if point.measured is not None:
                ax.scatter(point.params, point.measured, marker=marker, s=60, color=color, zorder=3)
                ax.annotate(
                    point.label,
                    (point.params, point.measured),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (the source's metric)")
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=TRAIN, label="MLP, measured"),
        plt.Line2D([], [], marker="^", ls="", color=VAL, label="CNN, measured"),
        plt.Line2D([], [], marker="o", ls="", mfc="none", mec="black", label="published"),
    ]
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False
    )
    return _save(fig, path)


def curves_figure(path: Path, panels: list[Curves], title: str) -> Path:
    """Val accuracy per epoch: the mean over seeds, a band from min to max, the published line."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        length = max((len(s) for s in panel.seeds), default=0)
        epochs = list(range(1, length + 1))
        per_epoch = [[s[i] for s in panel.seeds if len(s) > i] for i in range(length)]
        if per_epoch:
            ax.plot(epochs, [sum(v) / len(v) for v in per_epoch], color=VAL, marker=".")
            if len(panel.seeds) > 1:
                ax.fill_between(
                    epochs,
                    [min(v) for v in per_epoch],
                    [max(v) for v in per_epoch],
                    color=VAL,
                    alpha=0.25,
                )
        if panel.published is not None:
            ax.axhline(panel.published, color="black", ls="--", lw=1)
        if panel.max_epochs:
            ax.set_xlim(0.5, panel.max_epochs + 0.5)
        ax.set_title(f"{panel.title} ({len(panel.seeds)} seed{'s' * (len(panel.seeds) != 1)})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    from matplotlib.patches import Patch

    handles = [plt.Line2D([], [], color=VAL, label="val accuracy, mean over seeds")]
    if any(len(panel.seeds) > 1 for panel in panels):
        handles.append(Patch(color=VAL, alpha=0.25, label="min-max over seeds"))
    if any(panel.published is not None for panel in panels):  # (none where the figure is test)
        published = plt.Line2D([], [], color="black", ls="--", lw=1, label="published val accuracy")
        handles.append(published)
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False
    )
    return _save(fig, path)
