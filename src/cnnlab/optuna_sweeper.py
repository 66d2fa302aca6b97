"""Hyperparameter search: a Hydra sweeper on Optuna's ask-and-tell API (``hparams_search=optuna``).

Each trial is one Hydra job run by the configured launcher (basic, joblib, slurm), in the run
directory ``<sweep dir>/<trial number>``. The study lives in persistent storage (an Optuna
journal file, or an RDB URL such as ``sqlite:///...``): rerunning the command continues it until
it holds ``n_trials`` finished trials. A trial left running by a killed sweep is marked failed and
its parameters are tried again. Failed trials are recorded and the search goes on; the command
then exits 1. Bad trials are pruned by :class:`cnnlab.optuna_pruning.OptunaPruning`, which this
sweeper adds to each trial's callbacks. The best trial and the parameter importances are written
to ``<sweep dir>/optuna_study.yaml``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.launchers import jobs_were_launched, mark_jobs_launched
from cnnlab.optuna_space import (
    as_overrides,
    check_same_search,
    distribution,
    quote,
    search_record,
)
from cnnlab.optuna_summary import importance_evaluator, write_summary
from cnnlab.rundir import pid_alive

log = logging.getLogger(__name__)
_OWNER = "sweeper"  # trial user attribute: host:pid of the sweep that asked for it


def open_storage(storage: str) -> Any:
    """An RDB URL (``sqlite:///x.db``) as is; any other string is a journal file path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in storage:
        return storage
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(storage)))


class OptunaSweeper(Sweeper):
    """Ask Optuna for ``n_jobs`` trials at a time, launch them, tell it their results."""

    def __init__(
        self,
        study_name: str,
        storage: str,
        direction: str = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: DictConfig | None = None,
        pruner: DictConfig | None = None,
        importance: DictConfig | None = None,
        params: DictConfig | None = None,
        monitor: str = "val/acc",
    ) -> None:
        self.study_name, self.storage, self.direction = study_name, str(storage), direction
        self.n_trials, self.n_jobs, self.monitor = int(n_trials), max(1, int(n_jobs)), monitor
        self.sampler, self.pruner, self.importance = sampler, pruner, importance
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.launcher: Any = None
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except ConfigError as err:
            if jobs_were_launched():
                raise
            # Hydra reports a sweeper's exception with status 1, the status of a failed job.
            print(f"cnnlab: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def _sweep(self, arguments: list[str]) -> Any:
        try:
            import optuna
        except ImportError:
            raise ConfigError(
                "hparams_search=optuna needs Optuna >= 4: pip install -e '.[optuna]'"
            ) from None

        assert self.config is not None
        parser = OverridesParser.create()
        space = {k: distribution(parser.parse_override(f"{k}={v}")) for k, v in self.params.items()}
        fixed = []
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                fixed.append(override.input_line)
        evaluator = importance_evaluator(self.importance)  # refused here, before any trial
        storage = open_storage(self.storage)
        search = search_record(space, fixed, self.direction, self.monitor)
        existing = _count_trials(storage, self.study_name, search)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            direction=self.direction,
            sampler=_build(self.sampler, seed_offset=existing),
            pruner=_build(self.pruner),
            load_if_exists=True,
        )
        check_same_search(study, search)  # a new study records its search
        _retry_stale_trials(study)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        failed = 0
        while (done := _finished(study)) < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            for trial in trials:
                trial.set_user_attr(_OWNER, _me())
            overrides = [[*fixed, *as_overrides(t.params), *self._pruning(t)] for t in trials]
            for trial, ret in zip(trials, self._launch(overrides, trials), strict=True):
                failed += _tell(study, trial, ret)
        write_summary(study, sweep_dir, evaluator)
        if failed:
            log.error("%d trial(s) failed; see their run directories under %s", failed, sweep_dir)
            raise SystemExit(1)
        return study

    def _pruning(self, trial: Any) -> list[str]:
        if self.pruner is None:
            return []
        spec = {
            "_target_": "cnnlab.optuna_pruning.OptunaPruning",
            "storage": self.storage,
            "study_name": self.study_name,
            "trial_id": trial._trial_id,
            "monitor": self.monitor,
            # the trial process decides on pruning, with the same pruner
            "pruner": OmegaConf.to_container(self.pruner, resolve=True),
        }
        return [f"+callbacks.optuna_pruning={quote(spec)}"]

    def _launch(self, overrides: list[list[str]], trials: list[Any]) -> Sequence[Any]:
        """Run the trials as jobs numbered by their trial number (one launch when consecutive)."""
        numbers = [t.number for t in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            returns = self.launcher.launch(overrides, initial_job_idx=numbers[0])
        else:
            returns = [
                self.launcher.launch([o], initial_job_idx=n)[0]
                for o, n in zip(overrides, numbers, strict=True)
            ]
        mark_jobs_launched()  # after: a trial config that does not compose is a config error
        return returns


def _build(spec: DictConfig | None, seed_offset: int = 0) -> Any:
    if spec is None:
        return None
    spec = OmegaConf.to_container(spec, resolve=True)
    if seed_offset and spec.get("seed") is not None:  # a rerun samples new points, not the old
        spec["seed"] = int(spec["seed"]) + seed_offset
    return instantiate(spec)


def _count_trials(storage: Any, study_name: str, search: dict[str, str]) -> int:
    """The trials of the study so far, once a rerun is known to continue the same search."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return 0
    check_same_search(study, search)  # before anything is written to the study
    return len(study.trials)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        1 for t in study.get_trials(deepcopy=False, states=states) if "stale" not in t.user_attrs
    )


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _retry_stale_trials(study: Any) -> None:
    """Trials left RUNNING by a sweep process that died on this host: fail and enqueue again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # no owner: its sweep was killed between asking for it and naming itself
        owner_host, _, pid = str(trial.user_attrs.get(_OWNER, f"{host}:0")).partition(":")
        if owner_host != host or not pid.isdigit() or (int(pid) and pid_alive(int(pid))):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "stale", f"its sweep (pid {pid}) died")
        study.tell(trial.number, state=TrialState.FAIL)
        if not trial.params:  # killed before its parameters were drawn: nothing to retry
            log.warning("Trial %d was left running by a killed sweep", trial.number)
            continue
        study.enqueue_trial(trial.params)
        log.warning(
            "Trial %d was left running by a killed sweep: trying its parameters again", trial.number
        )


def _tell(study: Any, trial: Any, ret: Any) -> int:
    """Record one trial's outcome; 1 when it failed."""
    from optuna.trial import TrialState

    value = ret._return_value if ret.status == JobStatus.COMPLETED else None
    pruned = study._storage.get_trial(trial._trial_id).user_attrs.get("pruned_at_epoch")
    if pruned is not None:
        study.tell(trial, state=TrialState.PRUNED)
        return 0
    if isinstance(value, int | float) and math.isfinite(value):
        study.tell(trial, float(value))
        return 0
    error = ret._return_value if ret.status == JobStatus.FAILED else f"returned {value!r}"
    trial.set_user_attr("error", str(error)[:1000])
    study.tell(trial, state=TrialState.FAIL)
    log.warning(
        "Trial %d failed: %s", trial.number, str(error).splitlines()[0][:300] if str(error) else ""
    )
    return 1
