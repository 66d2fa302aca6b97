"""Shared command-line plumbing: user errors print one paragraph and exit with status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cnnlab.errors import CnnlabError


def run_cli(func: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Call ``func(argv)``; a :class:`CnnlabError` becomes ``cnnlab: error: ...`` and exit 2."""
    try:
        func(sys.argv[1:] if argv is None else argv)
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
