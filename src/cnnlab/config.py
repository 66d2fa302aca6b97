"""Config resolvers and validation: catch impossible values before any data is loaded."""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError

# The configs ship inside the package (cnnlab/conf, mapped from the repository's conf/ by
# pyproject.toml); a source checkout or editable install reads conf/ at the top of the repo.
_PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = (
    _PACKAGED_CONFIG_DIR
    if _PACKAGED_CONFIG_DIR.is_dir()
    else Path(__file__).resolve().parents[2] / "conf"
)
# A directory of the user's own configs (e.g. experiment/mine.yaml), searched before CONFIG_DIR.
USER_CONFIG_ENV = "CNNLAB_CONFIG_DIR"


def user_config_overrides() -> list[str]:
    """``hydra.searchpath=[file://<dir>]`` for ``$CNNLAB_CONFIG_DIR``; nothing when it is unset."""
    import os

    value = os.environ.get(USER_CONFIG_ENV)
    if not value:
        return []
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"{USER_CONFIG_ENV}={value} is not a directory. Point it at a folder of your own "
            "configs laid out like conf/ (e.g. experiment/mine.yaml), or unset it."
        )
    return [f"hydra.searchpath=[file://{path}]"]


def register_resolvers() -> None:
    """``${len:list}`` and ``${class_range:n}`` (the names "0".."n-1"), used by data configs."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("class_range"):
        OmegaConf.register_new_resolver("class_range", lambda n: [str(i) for i in range(int(n))])
    from cnnlab.data.schema import register

    register()  # the data presets' defaults, generated from the Python signatures


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


Check = Callable[[Any], bool]

# Every value check of the config, applied before any work. Keys are patterns of dotted config
# keys (``fnmatch``: ``*`` matches across dots, so ``model.*dropout`` covers any dropout key of
# any model and ``model.*dropout.[0-9]*`` the entries of dropout lists); value -> (check, what
# an accepted value looks like). Checks that relate several values of one model stay in its
# constructor (e.g. the last channel count of AllConvNet), with the same error type.
RULES: dict[str, tuple[Check, str]] = {
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "monitor_mode": (lambda v: v in ("min", "max"), "'min' or 'max'"),
    "optimizer.lr": (
        lambda v: _is_number(v) and 0 < v < math.inf,
        "a positive number, e.g. 0.001 (finite)",
    ),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "module.l2_lambda": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "module.*_weight_decay": (
        lambda v: v is None or (_is_number(v) and v >= 0),
        "null (the optimizer's weight_decay) or a number >= 0",
    ),
    "module.norm_lr_scale": (
        lambda v: _is_number(v) and v > 0,
        "a positive number (1: the optimizer's lr for every parameter)",
    ),
    "module.label_smoothing": (
        lambda v: _is_number(v) and 0 <= v < 1,
        "a number in [0, 1) (0: hard targets)",
    ),
    "module.eval_norm": (lambda v: v in ("running", "batch"), "'running' or 'batch'"),
    "module.eval_dropout": (lambda v: isinstance(v, bool), "true or false"),
    "module.tta_in_validation": (lambda v: isinstance(v, bool), "true or false"),
    "module.eval_translate_tta": (
        lambda v: _is_int(v) and 0 <= v <= 4,
        "an integer number of pixels in [0, 4] (0: off)",
    ),
    "data.augment.hflip": (
        lambda v: v in (True, False, "alternate"),
        "true (random), false or alternate (airbench's every-other-epoch flip)",
    ),
    "model.*dropout": (lambda v: v is None or _is_probability(v), "a probability in [0, 1)"),
    "model.*dropout.[0-9]*": (lambda v: v is None or _is_probability(v), "a probability in [0, 1)"),
    "data.batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1"),
    "data.num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data.val_split": (
        lambda v: (
            v in ("test", "official") or (_is_number(v) and (0 < v < 1 or (_is_int(v) and v >= 1)))
        ),
        "a fraction in (0, 1), a number of images >= 1, 'test' or 'official'",
    ),
    "data.test_split": (
        lambda v: _is_number(v) and (0 <= v < 1 or (_is_int(v) and v >= 1)),
        "a fraction in [0, 1) or a number of images",
    ),
    "torch_threads": (
        lambda v: v is None or v == "auto" or (_is_int(v) and v >= 1),
        "an integer >= 1, auto or null",
    ),
    "trainer.max_epochs": (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1"),
    "trainer.max_steps": (
        lambda v: _is_int(v) and (v >= 1 or v == -1),
        "-1 (no limit) or an integer >= 1",
    ),
    "trainer.log_every_n_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "trainer.gradient_clip_val": (
        lambda v: v is None or (_is_number(v) and 0 <= v < math.inf),
        "null (no clipping) or a finite number >= 0",
    ),
}


def _is_probability(v: Any) -> bool:
    return _is_number(v) and 0 <= v < 1


def _walk_plain(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Leaves of a plain container, interpolations unresolved (a '???' stays visible)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_plain(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk_plain(item, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def _check_interpolations(raw: Any, cfg: DictConfig) -> None:
    """Every ``${...}`` outside ``hydra`` resolves; else name the key and the reason."""
    from omegaconf.errors import OmegaConfBaseException

    for key, value in _walk_plain(raw, ""):
        if not (isinstance(value, str) and "${" in value) or key.split(".")[0] == "hydra":
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(
                f"{key}={value!r} cannot be resolved ({reason}). Fix or quote the value."
            ) from None


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first impossible value and what is accepted."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    missing = sorted(
        k for k, v in _walk_plain(raw, "") if v == "???" and k.split(".")[0] != "hydra"
    )
    if missing:
        raise ConfigError(
            f"Required config value(s) {missing} are not set (they are '???' in the config). "
            f"Set them on the command line, e.g. {missing[0]}=<value>."
        )
    _check_interpolations(raw, cfg)
    keys = [k for k, _ in _walk_plain(raw, "") if k.split(".")[0] != "hydra"]
    for pattern, (check, accepted) in RULES.items():
        for key in fnmatch.filter(keys, pattern):
            # Resolved one value at a time: other keys may need a running Hydra to resolve.
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
            if OmegaConf.is_config(value):  # an interpolation that resolved to a list
                value = OmegaConf.to_container(value, resolve=True)
            for item in value if isinstance(value, list) else [value]:
                if not check(item):
                    raise ConfigError(f"{key}={value!r} is not valid: it must be {accepted}.")


def check_output_dir(cfg: DictConfig) -> None:
    """Refuse a ``paths.output_dir`` override: it would split a run from its Hydra directory."""
    paths = cfg.get("paths")
    if paths is None or OmegaConf.is_missing(paths, "output_dir"):
        return
    if not OmegaConf.is_interpolation(paths, "output_dir"):
        raise ConfigError(
            f"paths.output_dir={paths.output_dir!r} cannot be set: it is the run directory Hydra "
            "creates. Move all output (runs, sweeps, cache) with paths.log_dir=<dir>, or name "
            "this run's directory with hydra.run.dir=<dir> (hydra.sweep.dir=<dir> with -m)."
        )


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides, without a run dir.

    Used by the tools that need no output directory of their own (summary, eval, report).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(
                config_name=config_name, overrides=[*user_config_overrides(), *overrides]
            )
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).split("Config search path:")[0].strip()
        raise ConfigError(" ".join(message.split())) from None
