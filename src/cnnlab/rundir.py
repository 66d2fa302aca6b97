"""The run directory: versions, metrics.json, and the guarantees that nothing is overwritten."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from cnnlab.errors import ConfigError, RunExistsError

METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    A reader (or a run killed mid-write) sees either the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        cause = _write_error(err, tmp)
        Path(tmp).unlink(missing_ok=True)
        if cause is None or (cause is err and cause.filename is not None):
            raise
        # a failed write names no file: name the one being written
        raise OSError(cause.errno, cause.strerror, cause.filename or str(path)) from err


def _write_error(err: BaseException, tmp: str) -> OSError | None:
    """The OSError behind a failed write of ``tmp``, or None when ``err`` is something else.

    torch.save reports a failed write as a RuntimeError of its C++ zip writer ("unexpected
    pos ..."): the OSError is in its chain, or (when torch wrote the file itself) nowhere.
    """
    if isinstance(err, OSError):
        return err
    if not isinstance(err, RuntimeError):
        return None
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return _full_disk_error(tmp)


def _full_disk_error(tmp: str) -> OSError | None:
    """ENOSPC when the file system of ``tmp`` has (almost) no space left, else None."""
    import errno

    try:
        stats = os.statvfs(tmp)
    except OSError:
        return None
    # A write that fails on a full disk first fills it up to its last blocks (root may use the
    # blocks reserved for it): less than 1% of the disk or 1 MiB is left, whichever is less.
    free = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    if free * stats.f_frsize >= min(2**20, stats.f_blocks * stats.f_frsize / 100):
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files of :func:`atomic_write` that a killed process left in the run."""
    run_dir = Path(run_dir)
    stale = [
        p
        for folder in (run_dir, run_dir / "checkpoints", run_dir / ".hydra")
        if folder.is_dir()
        for p in folder.glob(".*.tmp")
        if p.is_file()
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so that a reader never sees a half-written file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_jsonable)
    atomic_write(path, lambda f: f.write(text.encode()))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when there is none (yet)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def ensure_writable(run_dir: Path, min_free_mb: float) -> None:
    """Fail now, with the path in the message, if the run directory cannot take our output."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"Cannot write to the output directory {run_dir} ({err.strerror or err}). "
            "Move all output with paths.log_dir=..., or this run alone with hydra.run.dir=... "
            "(hydra.sweep.dir=... for -m), or fix the directory's permissions."
        ) from None
    free_mb = _free_megabytes(run_dir)
    if free_mb < min_free_mb:
        raise ConfigError(
            f"Only {free_mb:.0f} MB are free under {run_dir}, less than the "
            f"paths.min_free_mb={min_free_mb:g} MB a run needs for checkpoints and logs. "
            "Free some space or point paths.log_dir at another disk."
        )


@contextmanager
def run_dir_lock(run_dir: Path, keep: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """Hold an exclusive lock on the run directory while the block runs.

    A lock file this call created is removed at the end unless ``keep()`` says otherwise
    (``cnnlab.train``: unless the run started), so a refused command changes nothing.

    The lock dies with the process (also on SIGKILL), so a killed run can be resumed at once,
    while a second process aimed at a directory still in use is refused. On a file system without
    ``flock`` (some network file systems) the run goes on unlocked, with a warning;
    ``CNNLAB_RUN_LOCK=off`` in the environment skips the lock altogether.
    """
    import errno
    import fcntl
    import logging

    if os.environ.get("CNNLAB_RUN_LOCK", "").lower() in ("off", "0", "false"):
        yield
        return
    path = run_dir / ".lock"
    created = not path.exists()
    with path.open("a") as handle:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunExistsError(
                    f"Another process is training in {run_dir} right now; cnnlab never lets two "
                    "runs write one directory. Wait for it to finish, or leave hydra.run.dir "
                    "unset."
                ) from None
            locked = False
            logging.getLogger(__name__).warning(
                "Cannot lock %s (%s: the file system does not support flock); running without "
                "the lock, so a second run aimed at this directory is not refused. "
                "CNNLAB_RUN_LOCK=off skips the attempt.",
                run_dir,
                err.strerror or err,
            )
        try:
            yield
        finally:
            if created and not keep():  # a refused or skipped command leaves no lock file
                path.unlink(missing_ok=True)
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _free_megabytes(path: Path) -> float:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize / 2**20


def git_commit(cwd: Path) -> str | None:
    """The checked-out commit (with ``-dirty`` when there are local changes), if in a repo."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(cwd: Path) -> dict[str, Any]:
    """Versions, machine and git commit: what is needed to say how a result was produced."""
    import hydra
    import lightning
    import omegaconf
    import torch
    import torchvision

    from cnnlab.provenance import provenance

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        # the command as typed, the cnnlab code's commit, the Slurm job (id, array index, node)
        **provenance(),
    }


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True
