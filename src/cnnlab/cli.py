"""Shared command-line plumbing: user errors print one paragraph and exit with status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cnnlab.errors import CnnlabError


def run_cli(func: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Call ``func(argv)``; a :class:`CnnlabError` becomes ``cnnlab: error: ...`` and exit 2."""
    quiet_third_party()
    try:
        func(sys.argv[1:] if argv is None else argv)
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def quiet_third_party() -> None:
    """Drop advertising and deprecation chatter from libraries that says nothing about the run."""
    import logging
    import warnings

    class _DropTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("💡 Tip")

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
    if logging.getLogger().handlers:
        # Lightning adds its own console handler; with Hydra's root handlers lines print twice.
        import lightning  # noqa: F401

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
