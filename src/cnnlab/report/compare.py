"""Measured against published: only for runs on the experiment's own data and protocol.

A run is compared with its experiment's ``expected`` figure when it completed and differs from
``experiment=<name>`` only in how it was executed (threads, paths, progress bar, ...), its seed,
the keys of ``expected.as_published`` (the overrides that measure as the published run did, e.g.
``module.eval_norm=batch``), or the copy of the dataset it read (``data=cifar10_jpeg`` is
CIFAR-10; with ``data.classes`` the CIFAR-2 subset).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from cnnlab.report.catalog import experiment_config
from cnnlab.report.runs import OPERATIONAL, Run, class_subset

# Dataset presets that read the same images (so the published figure applies).
FAMILY = {"cifar2": "cifar10", "cifar10_jpeg": "cifar10"}
COPIES = {"cifar10_jpeg": "JPEG copy of CIFAR-10"}
# Overrides that select which copy of the data is read, checked through the resulting classes.
DATA_KEYS = ("data", "data.classes", "data.class_names")


def variant(run: Run) -> dict[str, str]:
    """The overrides that change what was trained, beyond the experiment and its seed."""
    prefixes = tuple(p if p.endswith(".") else p + "." for p in OPERATIONAL)

    def kept(key: str) -> bool:
        key = key.lstrip("+~")
        if key in (*OPERATIONAL, *DATA_KEYS, "experiment", "seed"):
            return False
        return not key.startswith(prefixes)

    return {k: v for k, v in run.overrides.items() if kept(k)}


def is_published_variant(run: Run, published: list[str]) -> bool:
    """Whether ``run``'s overrides are exactly ``published`` (``key=value``), as YAML reads them."""
    wanted = as_published({"as_published": published})
    mine = {k.lstrip("+~"): v for k, v in variant(run).items()}
    return (
        bool(wanted)
        and mine.keys() == wanted.keys()
        and all(_same(wanted[k], mine[k]) for k in mine)
    )


def mismatch(run: Run) -> str | None:
    """Why the experiment's published figure does not apply to ``run`` (None: it applies)."""
    reference = experiment_config(run.experiment) if run.experiment else None
    published = as_published((reference or {}).get("expected"))
    changed = [k for k, v in variant(run).items() if not _same(published.get(k.lstrip("+~")), v)]
    if changed:
        verb = "differs" if len(changed) == 1 else "differ"
        return f"{', '.join(changed)} {verb} from the experiment's protocol"
    if not any(k in run.overrides for k in DATA_KEYS):
        return None
    if reference is None:
        return "its data is overridden and the experiment's config is not in conf/"
    data = run.choices.get("data", "")
    classes = class_subset(run.config)
    same = FAMILY.get(data, data) == FAMILY.get(reference["data"], reference["data"])
    if not same or classes != reference["classes"]:
        wanted = reference["data"] + (
            f" {list(reference['classes'])}" if reference["classes"] else ""
        )
        return f"data={data} is not the experiment's data ({wanted})"
    return None


def _same(published: str | None, value: Any) -> bool:
    """Whether an override's value is the published one as YAML reads both (True == true)."""
    import yaml

    if published is None:
        return False
    try:
        return yaml.safe_load(published) == yaml.safe_load(str(value))
    except yaml.YAMLError:
        return published == str(value)


def as_published(expected: dict[str, Any] | None) -> dict[str, str]:
    """``expected.as_published`` (``["key=value", ...]``) as ``{key: value}``."""
    pairs = (item.split("=", 1) for item in (expected or {}).get("as_published") or ())
    return {key.lstrip("+~"): value for key, value in pairs}


def data_note(run: Run) -> str:
    """The dataset a run read, naming a copy (e.g. the JPEG one) where it is not the official."""
    data = run.choices.get("data", "-")
    return f"{data} ({COPIES[data]})" if data in COPIES else data


@dataclass
class Comparison:
    """The published figure of a row's experiment and the row's completed, comparable runs."""

    expected: dict[str, Any] | None
    measured: list[float] = field(default_factory=list)
    reason: str | None = None  # why nothing is compared

    @property
    def metric(self) -> str:
        return (self.expected or {}).get("metric", "val/acc")

    @property
    def published(self) -> float | None:
        return (self.expected or {}).get("value")

    @property
    def n(self) -> int:
        return len(self.measured)

    def delta(self) -> tuple[float, float | None] | None:
        if not self.measured or self.published is None:
            return None
        deltas = [m - self.published for m in self.measured]
        std = statistics.stdev(deltas) if len(deltas) > 1 else None
        return statistics.fmean(deltas), std

    def band_text(self) -> str:
        expected = self.expected or {}
        parts = []
        if expected.get("band") is not None:
            points = 100 * expected["band"]
            parts.append(f"±{points:g} pt{'s' if points != 1 else ''}")
        if expected.get("min") is not None:
            parts.append(f"≥ {expected['min']:g}")
        return ", ".join(parts) or "-"

    def miss(self) -> float | None:
        """How far the mean lies outside the band (0 inside; None without a band or a mean)."""
        delta = self.delta()
        expected = self.expected or {}
        band, minimum = expected.get("band"), expected.get("min")
        if delta is None or (band is None and minimum is None):
            return None
        measured = self.published + delta[0]
        outside = max(0.0, abs(delta[0]) - band) if band is not None else 0.0
        if minimum is not None:
            outside = max(outside, minimum - measured)
        return outside

    def within(self) -> bool | None:
        miss = self.miss()
        return None if miss is None else miss <= 1e-9

    def verdict(self) -> str:
        miss = self.miss()
        if miss is None:
            return ""
        if self.within():
            return "✓"
        return f"✗ {100 * miss:.1f} pts outside, {self.n} seed{'s' if self.n != 1 else ''}"

    def published_text(self) -> str:
        expected = self.expected or {}
        if self.published is None or (self.reason or "").startswith("not compared"):
            return "-"
        text = f"{self.metric.split('/')[0]} {_figure(self.published)}"
        if expected.get("train") is not None:
            text = f"train {_figure(expected['train'])}, {text}"
        return text

    def delta_text(self) -> str:
        delta = self.delta()
        if delta is None:
            return "-" if self.published is None or not self.reason else self.reason
        mean, std = delta
        text = f"{mean:+.4f}" + (f" ± {std:.4f}" if std is not None else "")
        within = self.within()
        return text + ("" if within is None else " ✓" if within else " ✗")


def _figure(value: float) -> str:
    """A published figure with its own digits, at least two decimals (0.9 -> 0.90)."""
    text = f"{value:.4f}".rstrip("0")
    decimals = len(text.split(".")[1])
    return text + "0" * max(0, 2 - decimals)


def compare(runs: list[Run]) -> Comparison:
    """Compare the completed runs of one row (one configuration, several seeds)."""
    expected = runs[0].expected if runs else None
    comparison = Comparison(expected)
    if not expected or expected.get("value") is None:
        return comparison
    done = [r for r in runs if r.status == "completed"]
    if not done:
        comparison.reason = "not completed"
        return comparison
    reasons = {mismatch(r) for r in done}
    if reasons != {None}:
        comparison.reason = "not compared: " + "; ".join(sorted(r for r in reasons if r))
        return comparison
    metric = comparison.metric
    comparison.measured = [v for r in done if (v := r.value(metric)) is not None]
    return comparison
