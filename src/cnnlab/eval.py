"""Evaluate a checkpoint: ``python -m cnnlab.eval ckpt_path=<file> [split=val] [key=value ...]``.

The model and data are rebuilt from the config stored in the checkpoint, changed by any
``key=value`` that is not one of ``conf/eval.yaml``'s own keys (e.g. ``module.eval_norm=batch``);
weights are loaded with ``torch.load(weights_only=True)`` on the CPU. The metrics are printed
and written to a new file under ``<run dir>/eval/``, next to (never over) the training output.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.cli import run_cli
from cnnlab.config import compose_config
from cnnlab.errors import ConfigError
from cnnlab.rundir import write_json_atomic

if TYPE_CHECKING:
    from omegaconf import DictConfig

_MISSING = object()


def eval_keys() -> set[str]:
    """cnnlab.eval's own keys (``conf/eval.yaml``); every other ``key=value`` changes the run."""
    from omegaconf import OmegaConf

    from cnnlab.config import CONFIG_DIR

    return set(OmegaConf.load(CONFIG_DIR / "eval.yaml"))


def evaluate(overrides: list[str]) -> dict[str, Any]:
    """Evaluate the checkpoint named by ``ckpt_path=`` and return its metrics."""
    import lightning as L

    from cnnlab.build import build_datamodule
    from cnnlab.checkpoint import module_from, read_checkpoint, saved_config

    keys = eval_keys()
    own = [o for o in overrides if o.split("=", 1)[0].lstrip("+") in keys]
    changes = [o for o in overrides if o not in own]
    args = compose_config("eval", own)
    if args.split not in ("test", "val"):
        raise ConfigError(f"split={args.split!r} is not valid: use 'test' or 'val'.")
    ckpt_path = Path(args.ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)
    cfg = saved_config(checkpoint, ckpt_path)
    apply_changes(cfg, changes, ckpt_path, keys)
    module = module_from(checkpoint, cfg, ckpt_path)
    datamodule = build_datamodule(cfg)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    run = trainer.test if args.split == "test" else trainer.validate
    (raw,) = run(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in raw.items()}
    result = {
        "checkpoint": str(ckpt_path.resolve()),
        "split": args.split,
        "changes": changes,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "metrics": metrics,
    }
    out_dir = Path(args.output_dir) if args.output_dir else ckpt_path.resolve().parents[1] / "eval"
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = _unused_path(out_dir / f"{ckpt_path.stem}-{args.split}-{stamp}.json")
    write_json_atomic(out, result)
    for key in sorted(metrics):
        print(f"{key}: {metrics[key]:.6f}")
    print(f"saved: {out}")
    return result


def apply_changes(cfg: DictConfig, changes: list[str], ckpt_path: Path, own: set[str]) -> None:
    """Set each ``key=value`` of ``changes`` in the run config ``cfg`` (parsed as the training
    command line parses it), then check the values as training would; unknown keys, deletions,
    sweeps, whole sections and impossible values: :class:`ConfigError`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from cnnlab.config import validate_config

    parser = OverridesParser.create()
    for change in changes:
        try:
            override = parser.parse_override(change)
        except HydraException as err:
            raise ConfigError(f"{change!r} is not a key=value: {err}") from None
        key = override.key_or_group
        existing = OmegaConf.select(cfg, key, default=_MISSING)
        if existing is _MISSING or override.type == OverrideType.DEL:
            raise ConfigError(
                f"{change!r} is neither a key of cnnlab.eval ({', '.join(sorted(own))}) "
                f"nor of the run config saved in {ckpt_path}; write key=value with a key of "
                "that config (its run's .hydra/config.yaml), e.g. module.eval_norm=batch."
            )
        if override.is_sweep_override():
            raise ConfigError(f"{change!r} is a sweep; cnnlab.eval takes one value per key.")
        if OmegaConf.is_dict(existing):
            raise ConfigError(
                f"{change!r} would replace the whole '{key}' section of the trained run's "
                f"config; change one value of it instead, e.g. {key}.<key>=<value>."
            )
        OmegaConf.update(cfg, key, override.value(), merge=False)
    validate_config(cfg)


def _unused_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def main() -> None:
    run_cli(evaluate)


if __name__ == "__main__":
    main()
