"""Config resolvers and validation: catch impossible values before any data is loaded."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError

# conf/ at the top of the repository (the package is installed in editable mode).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_resolvers() -> None:
    """``${len:list}`` and ``${class_range:n}`` (the names "0".."n-1"), used by data configs."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("class_range"):
        OmegaConf.register_new_resolver("class_range", lambda n: [str(i) for i in range(int(n))])


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


Check = Callable[[Any], bool]

# key -> (check, what an accepted value looks like)
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
    "trainer.log_every_n_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}

DROPOUT_RULE: tuple[Check, str] = (
    lambda v: _is_number(v) and 0 <= v < 1,
    "a probability in [0, 1)",
)


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


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    sentinel = object()
    value = OmegaConf.select(cfg, key, default=sentinel, throw_on_missing=False)
    return value is not sentinel, value


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
    for key, (check, accepted) in RULES.items():
        present, value = _select(cfg, key)
        if present and not check(value):
            raise ConfigError(f"{key}={value!r} is not valid: it must be {accepted}.")
    model = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
    for key, value in _walk_plain(model, "model."):
        parts = key.split(".")
        # a scalar `dropout` or an entry of a `dropout` list
        if "dropout" in parts[-2:] and value is not None:
            check, accepted = DROPOUT_RULE
            if not check(value):
                raise ConfigError(f"{key}={value!r} is not valid: it must be {accepted}.")


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
            return compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).split("Config search path:")[0].strip()
        raise ConfigError(" ".join(message.split())) from None
