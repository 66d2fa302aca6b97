"""Shared command-line plumbing: user errors print one paragraph and exit with status 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from cnnlab.errors import CnnlabError


def run_cli(
    func: Callable[[list[str]], object], argv: list[str] | None = None, own_help: bool = False
) -> None:
    """Call ``func(argv)``; a :class:`CnnlabError` becomes ``cnnlab: error: ...`` and exit 2.

    ``--help`` prints the entry point's module docstring, unless ``func`` parses its own
    arguments (``own_help``, e.g. with argparse)."""
    from omegaconf.errors import OmegaConfBaseException

    args = sys.argv[1:] if argv is None else argv
    # the entry point's module docstring is its manual
    if not own_help and {"-h", "--help"} & set(args):
        print((sys.modules[func.__module__].__doc__ or "").strip())
        raise SystemExit(0)
    quiet_third_party()
    try:
        func(args)
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OmegaConfBaseException as err:  # e.g. a required value (???) left unset
        message = " ".join(str(err).split("\n")[0].split())
        print(
            f"cnnlab: error: {message}. Set it on the command line, e.g. key=value.",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        # "Loading `train_dataloader` to estimate ...": a lookup after the test, not a load
        return not (message.startswith("💡 Tip") or "to estimate number of stepping" in message)


def quiet_third_party() -> None:
    """Drop advertising and deprecation chatter from libraries that says nothing about the run."""
    import warnings

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropChatter) for f in rank_zero.filters):
        rank_zero.addFilter(_DropChatter())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
    # cnnlab's module moves batches itself (device-resident data, uint8 -> float on device).
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`")
    # Printed on any machine with SLURM installed; cnnlab's SLURM launcher starts jobs itself.
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system")
    if logging.getLogger().handlers:
        # Lightning adds its own console handler; with Hydra's root handlers lines print twice.
        import lightning  # noqa: F401

        # Imported before Hydra set up logging, Lightning also stopped propagating: undo both.
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
