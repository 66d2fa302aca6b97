"""Hydra callback: the output-directory checks Hydra would otherwise fail with a traceback.

Runs in the launching process before Hydra creates the run or sweep directory: an output path
that cannot be created is one line and exit 2; a sweep directory that already holds a sweep is
refused unless ``resume=true`` repeats the same sweep; repeated overrides of a key are warned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.run_lifecycle import CREATED_DIRS, config_differences


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
        CREATED_DIRS[:] = missing
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
            stored = _task_overrides(OmegaConf.load(stored_path))
            differences = config_differences(
                _override_dict(stored), _override_dict(_task_overrides(config))
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
    for key, values in repeated_keys(_task_overrides(config)).items():
        print(
            f"cnnlab: warning: {key} is given {len(values)} times ({', '.join(values)}); "
            f"the last one, {values[-1]}, is used.",
            file=sys.stderr,
        )


def _task_overrides(config: DictConfig) -> list[str]:
    """The command-line overrides as typed (a value may hold a ``${...}`` that won't resolve)."""
    overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    return [str(item) for item in overrides]
