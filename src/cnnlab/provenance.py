"""Where a result came from: the user's command, the code's commit, the Slurm job."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from cnnlab import cluster
from cnnlab.config import CONFIG_DIR

# Set by the submitit launchers in each job: the command the user typed, not submitit's _submit.py.
COMMAND_ENV = "CNNLAB_COMMAND"


def command_line() -> str:
    """This process's command line as typed (interpreter and ``-m`` included)."""
    return shlex.join(getattr(sys, "orig_argv", sys.argv))


def package_commit() -> str | None:
    """The commit of the cnnlab code that runs, wherever the command was started from.

    cnnlab's own git checkout (``pip install -e .`` or ``PYTHONPATH=src``) answers with its
    commit (``-dirty`` when it has local changes); an installed copy with the commit pip
    recorded (``pip install git+...@<commit>``) or the (abbreviated) one setuptools-scm put in
    the version it was built with (``0.1.devN+g<hash>[.d<date>]``, the date when the tree had
    local changes). Code that is neither (a plain copy, or a checkout of another project that
    holds an install) has no commit to name.
    """
    from cnnlab.rundir import git_commit

    here = Path(__file__).resolve()
    if _in_own_checkout(here):
        return git_commit(here.parent)
    distribution = _installed_here(here)
    if distribution is None:
        return None
    vcs = json.loads(distribution.read_text("direct_url.json") or "{}").get("vcs_info", {})
    if vcs.get("commit_id"):
        return vcs["commit_id"]
    node, _, dirty = distribution.version.partition("+")[2].partition(".")
    if not node.startswith("g"):  # built without git history: no commit to name
        return None
    return node[1:] + ("-dirty" if dirty else "")


def package_version() -> str | None:
    """The version of the installed cnnlab that runs (None for a checkout or a plain copy:
    installed metadata, if any, describes other files)."""
    distribution = _installed_here(Path(__file__).resolve())
    return distribution.version if distribution is not None else None


def _in_own_checkout(here: Path) -> bool:
    """Whether ``here`` lies in cnnlab's own git checkout (not in another project's)."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=here.parent, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    root = Path(top.stdout.strip())
    return top.returncode == 0 and (root / "src" / "cnnlab" / here.name).resolve() == here


def _installed_here(here: Path) -> metadata.Distribution | None:
    """The installed cnnlab distribution whose files are the ones running, if any."""
    try:
        distribution = metadata.distribution("cnnlab")
    except metadata.PackageNotFoundError:
        return None
    located = Path(str(distribution.locate_file(f"cnnlab/{here.name}"))).resolve()
    return distribution if located == here else None


def provenance() -> dict[str, Any]:
    """The ``environment.json`` fields that say how this run was started."""
    return {
        "command": os.environ.get(COMMAND_ENV) or command_line(),
        "cwd": str(Path.cwd()),
        "cnnlab": package_version(),
        # which copy of the code and configs ran (a checkout, an install, a user's venv)
        "cnnlab_dir": str(Path(__file__).resolve().parent),
        "config_dir": str(CONFIG_DIR),
        "git_commit": package_commit(),
        "slurm": cluster.slurm_job(),
    }
