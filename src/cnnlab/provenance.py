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

# Set by the submitit launchers in each job: the command the user typed, not submitit's _submit.py.
COMMAND_ENV = "CNNLAB_COMMAND"


def command_line() -> str:
    """This process's command line as typed (interpreter and ``-m`` included)."""
    return shlex.join(getattr(sys, "orig_argv", sys.argv))


def package_commit() -> str | None:
    """The commit of the cnnlab code that runs, wherever the command was started from.

    A source checkout (``pip install -e .`` or ``PYTHONPATH=src``) answers with its git commit
    (``-dirty`` when it has local changes); a ``pip install git+...@<commit>`` with the commit pip
    recorded in the distribution's ``direct_url.json``.
    """
    from cnnlab.rundir import git_commit

    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        return commit
    try:
        direct_url = metadata.distribution("cnnlab").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    vcs = json.loads(direct_url or "{}").get("vcs_info", {})
    return vcs.get("commit_id")


def provenance() -> dict[str, Any]:
    """The ``environment.json`` fields that say how this run was started."""
    return {
        "command": os.environ.get(COMMAND_ENV) or command_line(),
        "cwd": str(Path.cwd()),
        "git_commit": package_commit(),
        "slurm": cluster.slurm_job(),
    }
