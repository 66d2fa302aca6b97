"""Where a result came from: the user's command, the code's commit, the Slurm job."""

from __future__ import annotations

import json
import os
import shlex
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

    A source checkout (``pip install -e .`` or ``PYTHONPATH=src``) answers with its git commit
    (``-dirty`` when it has local changes); a ``pip install git+...@<commit>`` with the commit pip
    recorded in the distribution's ``direct_url.json``; any other install with the (abbreviated)
    commit that setuptools-scm put in the version it was built with (``0.1.devN+g<hash>[.d<date>]``,
    the date when the tree had local changes).
    """
    from cnnlab.rundir import git_commit

    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        return commit
    try:
        distribution = metadata.distribution("cnnlab")
    except metadata.PackageNotFoundError:
        return None
    vcs = json.loads(distribution.read_text("direct_url.json") or "{}").get("vcs_info", {})
    if vcs.get("commit_id"):
        return vcs["commit_id"]
    node, _, dirty = distribution.version.partition("+")[2].partition(".")
    if not node.startswith("g"):  # built without git history: no commit to name
        return None
    return node[1:] + ("-dirty" if dirty else "")


def package_version() -> str | None:
    """The installed cnnlab's version (None when it runs from sources that were never installed)."""
    try:
        return metadata.version("cnnlab")
    except metadata.PackageNotFoundError:
        return None


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
