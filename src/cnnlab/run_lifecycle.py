"""Who may write a run directory, and when: the checks that run before cnnlab touches it.

A command aimed at a directory first decides whether it *owns* it: a fresh directory (holding no
run), or an existing run that ``resume=true`` continues with the config it was started with.
Until then nothing is written there (Hydra's own ``.hydra/`` record is switched off in
``conf/hydra/default.yaml`` and written by :func:`save_run_config` once the run starts), so a
refused command leaves the directory byte for byte as it was. :class:`OutputDirGuard` (a Hydra
callback) does the same for the checks Hydra would otherwise fail with a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError, RunExistsError

#: Keys that say how a run executes, not what it computes: ``resume=true`` accepts a different
#: value for them (and for anything below them) without calling the config changed.
EXECUTION_ONLY_KEYS = (
    "resume",
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
    stored = OmegaConf.to_container(OmegaConf.load(stored_path), resolve=False)
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
_CREATED: list[Path] = []


def discard_unstarted(run_dir: Path) -> None:
    """Remove what a command that never started its run left in a fresh directory."""
    for name in _PRE_START_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if Path(run_dir).absolute() not in _CREATED:
        return
    for directory in _CREATED:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: a user's own files stay


def repeated_keys(overrides: Iterable[str]) -> dict[str, list[str]]:
    """Override keys given more than once, with all their values (the last one wins)."""
    seen: dict[str, list[str]] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        seen.setdefault(key.lstrip("+~"), []).append(value)
    return {k: v for k, v in seen.items() if len(v) > 1}


def _fail(message: str) -> None:
    print(f"cnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _check_creatable(directory: Path, what: str) -> None:
    directory = directory.absolute()
    try:
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        _CREATED[:] = missing
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(directory))
    except OSError as err:
        _fail(
            f"Cannot create or write the {what} {directory} ({err.strerror or err}). Choose "
            "another place with hydra.run.dir=... (or hydra.sweep.dir=... for -m)."
        )


class OutputDirGuard(Callback):
    """Hydra callback: check the output directory before Hydra creates it, warn on repeats.

    For a sweep, ``hydra.sweep.dir`` that already holds one (its ``multirun.yaml``) is refused
    unless ``resume=true`` repeats the same sweep (execution-only keys excepted), so a resumed
    sweep can never file old results under new values.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _warn_repeats(config)
        _check_creatable(Path(config.hydra.run.dir), "output directory")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnlab import interrupts

        interrupts.SWEEP.started = True
        _warn_repeats(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        interrupts.SWEEP.directory = sweep_dir
        stored_path = sweep_dir / "multirun.yaml"
        if stored_path.is_file():
            if not config.get("resume"):
                _fail(
                    f"{sweep_dir} already holds a sweep ({stored_path.name}); cnnlab never "
                    "overwrites one. Add resume=true to finish it, or leave hydra.sweep.dir unset."
                )
            stored = OmegaConf.load(stored_path).hydra.overrides.task
            differences = config_differences(
                _override_dict(stored), _override_dict(config.hydra.overrides.task)
            )
            if differences:
                _fail(
                    f"resume=true, but this sweep differs from the one in {sweep_dir}: "
                    f"{'; '.join(differences[:6])}. Repeat the sweep's own command with "
                    "resume=true, or start a new sweep (leave hydra.sweep.dir unset)."
                )
        _check_creatable(sweep_dir, "sweep directory")


def _override_dict(overrides: Iterable[str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def _warn_repeats(config: DictConfig) -> None:
    for key, values in repeated_keys(config.hydra.overrides.task).items():
        print(
            f"cnnlab: warning: {key} is given {len(values)} times ({', '.join(values)}); "
            f"the last one, {values[-1]}, is used.",
            file=sys.stderr,
        )
