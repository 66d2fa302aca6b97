"""The search space of ``hparams_search=optuna`` in Hydra's override grammar and in Optuna's.

``choice(a, b)``, ``interval(lo, hi)``, ``tag(log, interval(lo, hi))`` and ``range(...)`` become
Optuna distributions (:func:`distribution`); a trial's sampled values become overrides again
(:func:`as_overrides`).
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from cnnlab.errors import ConfigError


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep: choice, interval, tag(log, interval), range."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(value.list))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(start, stop - step, step=step)
        return FloatDistribution(start, stop, step=step)
    raise ConfigError(
        f"hparams_search: {key}={override.input_line.split('=', 1)[-1]} is not a search space; "
        "use choice(a, b, ...), interval(low, high), tag(log, interval(low, high)) or range(...)."
    )


def as_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={quote(v)}" for k, v in params.items()]


def quote(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted where needed, dicts, lists)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{quote(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(quote(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str) and not value.replace("_", "").replace(".", "").isalnum():
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)
