"""Run directories as the reports see them: config, overrides, metrics, status and curves.

Reads only what a run wrote (``.hydra/``, ``metrics.json``, ``tensorboard/`` event files) and,
for a ``running`` status, whether a process still holds the run (its lock, else its pid).
"""

from __future__ import annotations

import errno
import fcntl
import math
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnnlab.rundir import read_metrics

# Statuses that say the run has not ended: shown with their epoch, never compared.
UNFINISHED = ("running", "interrupted", "time_limit", "incomplete")
# Overrides that say how a run was executed, not what was trained.
OPERATIONAL = (
    "resume",
    "torch_threads",
    "ckpt_path",
    "paths.",
    "callbacks.progress_bar",
    "trainer.max_time",
    "trainer.accelerator",
    "trainer.devices",
    "hydra",
    "tags",
)


@dataclass
class Run:
    """One run directory."""

    path: Path
    config: Any
    overrides: dict[str, str]
    choices: dict[str, str]
    metrics: dict[str, Any]
    hydra_overrides: list[str] = field(default_factory=list)

    @property
    def experiment(self) -> str | None:
        return self.overrides.get("experiment") or self.choices.get("experiment")

    @property
    def expected(self) -> dict[str, Any] | None:
        expected = self.config.get("expected")
        return OmegaConf.to_container(expected) if expected is not None else None

    @property
    def params(self) -> int | None:
        return self.metrics.get("params")

    @property
    def tags(self) -> list[str]:
        return [str(t) for t in self.config.get("tags") or []]

    @property
    def seed(self) -> str:
        return self.overrides.get("seed") or str(self.config.get("seed", ""))

    @cached_property
    def status(self) -> str:
        """completed, failed, time_limit, interrupted, running, or incomplete (no metrics)."""
        return record_status(self.path, self.metrics) or "incomplete"

    @property
    def debug(self) -> bool:
        """A fast_dev_run / debug run: checks that a config runs, measures nothing."""
        fast = OmegaConf.select(self.config, "trainer.fast_dev_run", default=False)
        return bool(self.choices.get("debug")) or bool(fast)

    def value(self, key: str) -> float | None:
        value = self.metrics.get(key)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return float(value) if ok else None

    @cached_property
    def curves(self) -> dict[str, list[float]]:
        """Per-epoch ``train/acc`` and ``val/acc`` from the TensorBoard event files."""
        return read_curves(self.path)

    @property
    def epochs_done(self) -> int:
        return len(self.curves.get("val/acc", []))

    @property
    def best_epoch(self) -> int | None:
        """1-based (metrics.json stores Lightning's 0-based ``current_epoch``)."""
        best = self.metrics.get("best_epoch")
        return int(best) + 1 if isinstance(best, (int, float)) and best >= 0 else None

    def command(self) -> str:
        """The command that makes this run, as a user would type it (``resume=true`` left out:
        it only continues a run and is refused on a directory that holds none)."""
        import shlex

        args = [f"{k}={v}" for k, v in self.overrides.items() if k != "resume"]
        args += self.hydra_overrides
        return " ".join(["python -m cnnlab.train", *(shlex.quote(a) for a in args)])


def find_runs(root: Path) -> list[Run]:
    """Every run directory under ``root`` (:func:`run_dirs`), loaded."""
    return [load_run(run_dir) for run_dir in run_dirs(root)]


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one with ``.hydra/config.yaml``) under ``root``, in path order; none
    inside a dot folder (e.g. a records folder's ``.staging``)."""
    root = Path(root)
    found = sorted(root.rglob(".hydra/config.yaml"), key=_natural_key)
    return [
        config.parent.parent
        for config in found
        if not any(part.startswith(".") for part in config.relative_to(root).parts[:-2])
    ]


def load_run(run_dir: Path) -> Run:
    hydra_dir = run_dir / ".hydra"
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
    choices: dict[str, str] = {}
    hydra_overrides: list[str] = []
    if (hydra_dir / "hydra.yaml").is_file():
        hydra_cfg = OmegaConf.load(hydra_dir / "hydra.yaml")
        raw = OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default={}) or {}
        choices = {k: str(v) for k, v in raw.items() if not k.startswith("hydra") and v}
        found = OmegaConf.select(hydra_cfg, "hydra.overrides.hydra", default=[]) or []
        hydra_overrides = [str(o) for o in found if str(o).startswith("hydra.run.dir=")]
    return Run(
        path=run_dir,
        config=OmegaConf.load(hydra_dir / "config.yaml"),
        overrides=dict(split_override(str(o)) for o in overrides),
        choices=choices,
        metrics=read_metrics(run_dir) or {},
        hydra_overrides=hydra_overrides,
    )


def class_subset(config: Any) -> tuple[str, ...] | None:
    """The class subset a run config selects (None: all of the dataset's classes)."""
    classes = OmegaConf.select(
        config, "data.classes", default=None, throw_on_resolution_failure=False
    )
    return tuple(str(c) for c in classes) if classes else None


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _natural_key(path: Path) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def process_alive(run_dir: Path, metrics: dict[str, Any]) -> bool | None:
    """Whether a process still holds the run; None: no way to tell.

    The run directory's lock decides: training holds it while it runs and the kernel frees it
    when the process dies, whereas a recorded pid may since belong to another process (pid 1 in
    a container). The pid is asked only where there is no usable lock (``CNNLAB_RUN_LOCK=off``,
    a file system without ``flock``, runs older than the lock).
    """
    from cnnlab.rundir import pid_alive

    held = lock_held(run_dir)
    if held is not None:
        return held
    pid, host = metrics.get("pid"), metrics.get("hostname", metrics.get("host"))
    if isinstance(pid, int) and host == socket.gethostname():
        return pid_alive(pid)
    return None


def record_status(run_dir: Path, metrics: dict[str, Any]) -> str | None:
    """The status metrics.json records, but ``interrupted`` for a ``running`` one whose process
    is gone (killed before it could say so) and ``running`` for a run not yet recorded whose
    process holds it; None: no record and no process."""
    status = metrics.get("status")
    if status not in (None, "running"):
        return str(status)
    alive = process_alive(run_dir, metrics)
    if status is None:
        return "running" if alive else None
    return "interrupted" if alive is False else "running"


def lock_held(run_dir: Path) -> bool | None:
    """Whether a process holds ``run_dir``'s lock (:func:`cnnlab.rundir.run_dir_lock`); None
    where there is no lock file or the file system has no ``flock`` (nothing to tell from it)."""
    try:
        handle = (Path(run_dir) / ".lock").open("rb")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            return True if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    """Per-epoch values of the epoch-level accuracy tags, in step order (resumes deduplicated)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[str, dict[int, float]] = {"train/acc": {}, "val/acc": {}}
    # The run directory's own event files; runs of cnnlab <= 0.1 wrote them under tensorboard/.
    files = [*run_dir.glob("events.out.tfevents.*"), *run_dir.glob("tensorboard/**/events.*")]
    for events in sorted(files):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in set(accumulator.Tags().get("scalars", [])) & by_step.keys():
            for event in accumulator.Scalars(tag):
                by_step[tag][event.step] = event.value
    return {tag: [steps[s] for s in sorted(steps)] for tag, steps in by_step.items() if steps}


def not_started(root: Path, runs: list[Run]) -> list[str]:
    """The jobs of the sweep in ``root`` (its ``multirun.yaml``) that have no run directory."""
    return [overrides for _, overrides in missing_jobs(root, runs)]


def missing_jobs(root: Path, runs: list[Run]) -> list[tuple[int, str]]:
    """``(hydra.job.num, overrides)`` of each job of the grid sweep in ``root`` (its
    ``multirun.yaml``) that none of ``runs`` ran."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = Path(root) / "multirun.yaml"
    if not multirun.is_file():
        return []
    cfg = OmegaConf.load(multirun)
    if not _grid_sweeper(str(OmegaConf.select(cfg, "hydra.sweeper._target_", default=""))):
        return []  # e.g. Optuna: the trials are not known in advance
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in task]
    parsed = OverridesParser.create().parse_overrides(arguments)
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    started = [set(r.overrides.items()) for r in runs]
    missing = []
    for number, job in enumerate(jobs):
        wanted = {split_override(o) for o in job}
        if not any(wanted <= have for have in started):
            missing.append((number, " ".join(job)))
    return missing


def _grid_sweeper(target: str) -> bool:
    """Whether the sweeper ``target`` names is Hydra's BasicSweeper or a subclass (cnnlab's
    ``hydra/sweeper=basic`` is one): sweepers whose jobs follow from the overrides alone."""
    from hydra.utils import get_class

    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    try:
        ancestors = get_class(target).__mro__
    except Exception:  # a class this installation cannot import is no grid it can expand
        return target == basic
    # By name: Hydra's plugin scan may import the module again, making another BasicSweeper.
    return any(f"{k.__module__}.{k.__qualname__}" == basic for k in ancestors)
