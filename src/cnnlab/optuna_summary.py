"""The summary written next to an Optuna study: ``<sweep dir>/optuna_study.yaml``.

The best trial, a count of the trials per state and the parameter importances, computed by
the evaluator that ``hydra.sweeper.importance`` names (default: Optuna's PED-ANOVA, which
needs numpy only; fANOVA, Optuna's own default, needs scikit-learn).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.rundir import atomic_write

log = logging.getLogger(__name__)
RESULTS_FILE = "optuna_study.yaml"
# PED-ANOVA compares the best 10 % of the trials (at least 2) with all of them: with fewer than
# 3 that is all of them, and the importances come out evenly split whatever the search found
MIN_TRIALS_FOR_IMPORTANCES = 3


def importance_evaluator(spec: Any) -> Any:
    """``hydra.sweeper.importance`` built, or a ConfigError naming what it needs."""
    import optuna
    from optuna.importance import BaseImportanceEvaluator

    if spec is None:
        return None
    shown = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else repr(spec)
    advice = (
        "Give an optuna.importance evaluator whose dependencies are installed, e.g. "
        "hydra.sweeper.importance._target_=optuna.importance.PedAnovaImportanceEvaluator "
        "(FanovaImportanceEvaluator needs scikit-learn), or hydra.sweeper.importance=null."
    )
    if not OmegaConf.is_config(spec) or "_target_" not in spec:
        raise ConfigError(f"hydra.sweeper.importance={shown} is not a _target_ config. {advice}")
    try:
        with warnings.catch_warnings():  # PED-ANOVA is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            evaluator = instantiate(OmegaConf.to_container(spec, resolve=True))
    except Exception as err:
        cause = " ".join(str(err.__cause__ or err).split())  # Hydra's message spans lines
        raise ConfigError(
            f"hydra.sweeper.importance={shown} cannot be built ({cause}). {advice}"
        ) from None
    if not isinstance(evaluator, BaseImportanceEvaluator):
        raise ConfigError(
            f"hydra.sweeper.importance={shown} is a {type(evaluator).__name__}, not an "
            f"importance evaluator. {advice}"
        )
    return evaluator


def write_summary(study: Any, sweep_dir: Path, evaluator: Any) -> None:
    """The best trial, the parameter importances and a count per state, next to the sweep."""
    import optuna
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    results: dict[str, Any] = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
    }
    results["trials"] = counts
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        results["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": str(sweep_dir / str(best.number)),
        }
    if evaluator is not None:
        results["importance_evaluator"] = type(evaluator).__name__
        if len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
            missing = f"fewer than {MIN_TRIALS_FOR_IMPORTANCES} completed trials"
            results["importances"] = f"not available: {missing}"
        else:
            try:
                importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
                results["importances"] = {k: round(float(v), 4) for k, v in importances.items()}
            except Exception as err:  # a user's evaluator failing must not lose the best trial
                results["importances"] = f"not available: {type(err).__name__}: {err}"
    text = yaml.safe_dump(results, sort_keys=False)
    atomic_write(sweep_dir / RESULTS_FILE, lambda f: f.write(text.encode()))
    log.info("Optuna study %s: %s", study.study_name, sweep_dir / RESULTS_FILE)
