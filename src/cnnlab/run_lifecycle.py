"""Who may write a run directory, and when: the checks that run before cnnlab touches it.

A command aimed at a directory first decides whether it *owns* it: a fresh directory (holding no
run), or an existing run that ``resume=true`` continues with the config it was started with.
Until then nothing is written there (Hydra's own ``.hydra/`` record is switched off in
``conf/hydra/default.yaml`` and written by :func:`save_run_config` once the run starts), so a
refused command leaves the directory byte for byte as it was. :class:`OutputDirGuard` (a Hydra
callback, ``cnnlab.output_guard``) does the same for the checks Hydra would otherwise fail with
a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from cnnlab.config_upgrade import upgrade
from cnnlab.errors import ConfigError, RunExistsError
from cnnlab.rundir import METRICS_FILE, read_metrics, remove_temp_files, write_json_atomic

#: Keys that say how a run executes, not what it computes: ``resume=true`` accepts a different
#: value for them (and for anything below them) without calling the config changed.
#: (``expected``, the published figure the report compares with, changes no computation.)
EXECUTION_ONLY_KEYS = (
    "resume",
    "expected",
    "ckpt_path",
    "torch_threads",
    "paths",
    "callbacks.progress_bar",
    "trainer.max_time",
    "trainer.enable_progress_bar",
)

CONFIG_RECORD = Path(".hydra")
# What Hydra (its job log) and the run-directory lock leave in a directory before a run starts.
_PRE_START_FILES = ("train.log", ".lock")


def holds_run(run_dir: Path) -> bool:
    """Whether a run was started in ``run_dir`` (its config record, metrics or checkpoints)."""
    return any(
        (run_dir / name).exists()
        for name in ("metrics.json", CONFIG_RECORD / "config.yaml", "checkpoints")
    )


def check_resumable(run_dir: Path, cfg: DictConfig, in_sweep: bool) -> None:
    """Refuse ``resume=true`` on a directory holding no run (single runs) or another config."""
    if not holds_run(run_dir):
        if in_sweep:  # a job the interrupted sweep never started: it starts now
            return
        raise ConfigError(
            f"resume=true, but {run_dir} holds no run to resume (no metrics.json, "
            ".hydra/config.yaml or checkpoints/). Drop resume=true to start a new run there, "
            "or point hydra.run.dir at the run to continue."
        )
    stored_path = run_dir / CONFIG_RECORD / "config.yaml"
    if not stored_path.is_file():
        return
    stored = upgrade(OmegaConf.to_container(OmegaConf.load(stored_path), resolve=False))
    requested = OmegaConf.to_container(cfg, resolve=False)
    differences = config_differences(stored, requested)
    if differences:
        shown = "; ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
        raise RunExistsError(
            f"resume=true, but the requested config differs from the one {run_dir} was started "
            f"with ({stored_path}): {shown}. Resume with the run's own values, or start a new "
            "run (leave hydra.run.dir / hydra.sweep.dir unset)."
        )


def config_differences(stored: Any, requested: Any) -> list[str]:
    """``key: stored -> requested`` for every leaf that differs, execution-only keys excepted."""
    old, new = dict(_leaves(stored, "")), dict(_leaves(requested, ""))
    keys = sorted(k for k in set(old) | set(new) if not is_execution_only(k))
    missing = "<unset>"
    return [
        f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
        for k in keys
        if old.get(k, missing) != new.get(k, missing)
    ]


def is_execution_only(key: str) -> bool:
    """Whether ``key`` (dotted) is or lies below one of :data:`EXECUTION_ONLY_KEYS`."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in EXECUTION_ONLY_KEYS)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def save_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write ``.hydra/config.yaml``, ``overrides.yaml`` and ``hydra.yaml`` as Hydra would."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.rundir import atomic_write

    def save(name: str, node: Any) -> None:
        text = OmegaConf.to_yaml(node).encode()
        atomic_write(run_dir / CONFIG_RECORD / name, lambda f: f.write(text))

    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    save("config.yaml", task)
    if HydraConfig.initialized():
        hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(HydraConfig.get())})
        hydra_cfg.hydra.output_subdir = str(CONFIG_RECORD)  # where the record lies
        save("hydra.yaml", hydra_cfg)
        save("overrides.yaml", HydraConfig.get().overrides.task)


def running_record() -> dict[str, Any]:
    """metrics.json of a run in progress: the process that holds it, so that a reader can tell
    a live run from one whose process died (status ``running``, process gone: interrupted)."""
    import socket
    from datetime import datetime, timezone

    return {
        "status": "running",
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# Directories this process created for its output (deepest first): removed again when the run
# never started, so that a typo leaves no trace. A directory that existed before stays.
CREATED_DIRS: list[Path] = []


def discard_unstarted(run_dir: Path) -> None:
    """Remove what a command that never started its run left in a fresh directory: every entry
    that appeared since :func:`claim` (the lock is still held), and the directories it made."""
    import shutil

    for entry in set(_entries(run_dir)) - RunState.entries_at_claim:
        path = run_dir / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for name in _PRE_START_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if Path(run_dir).absolute() in CREATED_DIRS:
        remove_created_dirs()


def discard_unstarted_sweep(sweep_dir: Path | None) -> None:
    """Remove the ``multirun.yaml`` Hydra wrote into a sweep directory this command created,
    when no job started (a job's config failed to compose), and the directories it made."""
    if sweep_dir is not None and Path(sweep_dir).absolute() in CREATED_DIRS:
        (Path(sweep_dir) / "multirun.yaml").unlink(missing_ok=True)
        remove_created_dirs()


def remove_created_dirs() -> None:
    """Remove the output directories this process created, where they are still empty."""
    for directory in CREATED_DIRS:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: a user's own files stay


def _entries(run_dir: Path) -> list[str]:
    return os.listdir(run_dir) if Path(run_dir).is_dir() else []


class RunState:
    """What the failure handlers need to know about the command's run directory."""

    task_started = False
    fresh = False  # the directory held no run when this command began
    owned = False  # its checks passed: this command may write the directory
    started = False  # training started (metrics.json says running)
    entries_at_claim: ClassVar[set[str]] = set()  # its entries when the checks began


def claim(cfg: DictConfig, run_dir: Path, in_sweep: bool) -> dict[str, Any] | None:
    """Refuse a directory this command may not write; return its previous metrics."""
    resuming = cfg.resume or cfg.ckpt_path == "last"
    if resuming:
        check_resumable(run_dir, cfg, in_sweep)
    elif holds_run(run_dir):
        raise RunExistsError(
            f"{run_dir} already holds a run; cnnlab never overwrites one. Add resume=true to "
            "continue it, or leave hydra.run.dir unset for a new one."
        )
    RunState.owned = True
    remove_temp_files(run_dir)  # left by a process killed during an atomic write
    return read_metrics(run_dir)


def record_failure(run_dir: Path, err: BaseException, in_sweep: bool) -> None:
    """Mark the run failed, if this command owns its directory (never over a completed run)."""
    if not RunState.started and RunState.fresh and not in_sweep:
        return  # nothing was trained, and train() removed the directory
    if not (RunState.owned or (RunState.fresh and in_sweep)) or not run_dir.is_dir():
        return  # refused: the directory belongs to another run
    previous = read_metrics(run_dir) or {}
    if previous.get("status") == "completed":
        return
    record = {
        "status": "failed",
        "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(),
    }
    try:
        write_json_atomic(run_dir / METRICS_FILE, record)
    except OSError as write_err:
        print(f"cnnlab: warning: could not record the failure: {write_err}", file=sys.stderr)
