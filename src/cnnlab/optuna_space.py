"""The search space of ``hparams_search=optuna`` in Hydra's override grammar and in Optuna's.

``choice(a, b)``, ``interval(lo, hi)``, ``tag(log, interval(lo, hi))`` and ``range(...)`` become
Optuna distributions (:func:`distribution`); a trial's sampled values become overrides again
(:func:`as_overrides`). A study records its search (:func:`search_record`), so that a rerun
that would change it is refused (:func:`check_same_search`).
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from cnnlab.errors import ConfigError
from cnnlab.run_lifecycle import is_execution_only


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


def search_record(
    space: dict[str, Any], fixed: list[str], direction: str, monitor: str
) -> dict[str, str]:
    """What makes a study's trials comparable: the search space, the fixed overrides (keys
    that only say how a run executes excepted), the direction and the metric."""
    record = {f"search {key}": repr(dist) for key, dist in space.items()}
    for line in fixed:
        key, _, value = line.partition("=")
        if not is_execution_only(key):
            record[key.lstrip("+~")] = value
    return {**record, "direction": direction, "monitor": monitor}


def check_same_search(study: Any, record: dict[str, str]) -> None:
    """Record the study's search when it starts; refuse a rerun that changes it (its trials
    would be mixed with the old ones under one best value)."""
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", record)
        return
    changed = [
        f"{key}: {stored.get(key, '<unset>')} -> {record.get(key, '<unset>')}"
        for key in sorted(set(stored) | set(record))
        if stored.get(key) != record.get(key)
    ]
    if changed:
        shown = "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
        raise ConfigError(
            f"the Optuna study {study.study_name!r} was started with another search ({shown}). "
            "Rerun it with its own overrides to continue it, or start a new study with "
            "hydra.sweeper.study_name=<new name>."
        )
