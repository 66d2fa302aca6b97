"""Optuna pruning inside a trial: the Lightning callback the Optuna sweeper adds to each trial."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Report ``monitor`` to the trial after each validation; stop the fit when Optuna prunes it.

    The trial then ends as a normal run (its ``metrics.json`` holds the epochs it trained), and
    the sweeper records it as pruned (the ``pruned_at_epoch`` trial attribute set here).
    """

    def __init__(
        self, storage: str, study_name: str, trial_id: int, monitor: str, pruner: Any = None
    ) -> None:
        self.storage, self.study_name = storage, study_name
        self.trial_id, self.monitor = int(trial_id), monitor
        self.pruner = pruner  # the sweeper's pruner (instantiated by Hydra, or its config)
        self._trial: Any = None

    def _get_trial(self) -> Any:
        if self._trial is None:
            import optuna

            from cnnlab.optuna_sweeper import open_storage

            pruner = self.pruner
            if isinstance(pruner, dict | DictConfig):
                pruner = instantiate(pruner)
            study = optuna.load_study(
                study_name=self.study_name, storage=open_storage(self.storage), pruner=pruner
            )
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or not trainer.is_global_zero or value is None:
            return
        trial, epoch = self._get_trial(), trainer.current_epoch
        trial.report(float(value), step=epoch)
        if trial.should_prune():
            log.info("Optuna pruned this trial at epoch %d (%s=%.4f)", epoch, self.monitor, value)
            trial.set_user_attr("pruned_at_epoch", epoch)
            trainer.should_stop = True
