"""hparams_search=optuna: cnnlab's Optuna (>= 4) sweeper, its storage, pruning and failures."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cnnlab.optuna_sweeper import _OWNER, _retry_stale_trials, open_storage
from forkrun import start_module

from conftest import ROOT, run_cli

TINY = [
    "hparams_search=optuna",
    "data=synthetic",
    "data.num_train=96",
    "data.num_test=32",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "callbacks.progress_bar=null",
    "model.hidden=[16]",
    "model.channels=[4,8]",
    "torch_threads=1",
]


def _study(sweep: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="cnnlab", storage=open_storage(str(sweep / "optuna.journal"))
    )


def _completed_trials(sweep: Path) -> int:
    try:
        return len(_study(sweep).get_trials(states=(TrialState.COMPLETE,)))
    except KeyError:  # the study does not exist yet
        return 0


def test_optuna_is_current() -> None:
    assert int(optuna.__version__.split(".")[0]) >= 4


@pytest.mark.slow
def test_killed_search_continues_in_the_same_study_on_rerun(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    args = [*TINY, f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start_module("cnnlab.train", args, ROOT, env)
    deadline = time.time() + 240
    while _completed_trials(sweep) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.3)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [t for t in _study(sweep).trials if t.state == TrialState.COMPLETE]
    assert 4 <= len(killed) < 8

    # how the trials execute (threads here) is no part of the search: the rerun continues it
    rerun = run_cli("cnnlab.train", *args, "torch_threads=2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = _study(sweep)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8, [(t.number, t.state.name) for t in study.trials]
    assert [t.number for t in complete[: len(killed)]] == [t.number for t in killed]
    # a trial the kill left running is failed as stale and the parameters it had drawn (all,
    # some or none: the kill can fall between two suggestions) are tried again
    for stale in (t for t in study.trials if t.state == TrialState.FAIL):
        assert "stale" in stale.user_attrs
        retried = [
            t
            for t in finished
            if t.number > stale.number and stale.params.items() <= t.params.items()
        ]
        assert retried
    results = yaml.safe_load((sweep / "optuna_study.yaml").read_text())
    assert results["best"]["value"] == max(t.value for t in complete)
    assert Path(results["best"]["run_dir"]).is_dir()
    assert set(results["importances"]) == {"optimizer.lr", "optimizer.weight_decay"}
    assert results["importance_evaluator"] == "PedAnovaImportanceEvaluator"

    # another search in the same study is refused before anything is written to it
    journal = (sweep / "optuna.journal").read_bytes()
    for change in (
        ["model.dropout=interval(0.0, 0.5)"],  # a new search space
        ["trainer.max_epochs=3"],  # a new fixed override
        ["optimized_metric=val/loss", "hydra.sweeper.direction=minimize"],
    ):
        refused = run_cli("cnnlab.train", *args, "hydra.sweeper.n_trials=9", *change)
        assert refused.returncode == 2, (change, refused.stderr[-2000:])
        message = refused.stderr.strip().splitlines()[-1]
        assert "was started with another search" in message and "study_name" in message
        assert (sweep / "optuna.journal").read_bytes() == journal, change


@pytest.mark.parametrize("drawn", [0, 1, 2], ids=["none", "some", "all"])
def test_a_trial_killed_while_drawing_its_parameters_is_retried_with_those_drawn(
    tmp_path: Path, drawn: int
) -> None:
    # the sweep can die before, between or after the suggestions of one study.ask()
    study = optuna.create_study(storage=open_storage(str(tmp_path / "j.journal")))
    trial = study.ask()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no process holds now
    trial.set_user_attr(_OWNER, f"{socket.gethostname()}:{gone.pid}")
    names = ["optimizer.lr", "optimizer.weight_decay"][:drawn]
    for name in names:
        trial.suggest_float(name, 1e-4, 1e-1, log=True)
    _retry_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL and "stale" in study.trials[0].user_attrs
    waiting = study.get_trials(states=(TrialState.WAITING,))
    if drawn:
        assert [t.system_attrs["fixed_params"] for t in waiting] == [study.trials[0].params]
    else:
        assert waiting == []


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    # two trials at a time through a parallel launcher (joblib's own tests: tests/test_sweeps.py)
    sweep = tmp_path / "search"
    run = run_cli(
        "cnnlab.train",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "data.batch_size=choice(0, 16)",
        "model.dropout=interval(0.0, 0.5)",
        "seed=3",
    )
    assert run.returncode == 1, run.stderr[-3000:]
    study = _study(sweep)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.FAIL in states and TrialState.COMPLETE in states
    for trial in study.trials:
        if trial.state == TrialState.FAIL:
            assert trial.params["data.batch_size"] == 0
            assert "data.batch_size=0 is not valid" in trial.user_attrs["error"]
            metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
            assert metrics["status"] == "failed"


def test_a_pruned_trial_stops_early(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    run = run_cli(
        "cnnlab.train",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "trainer.max_epochs=4",
        "hydra.sweeper.n_trials=2",
        # prunes any trial whose val/acc is below 2, i.e. every trial after its first epoch
        "~hydra.sweeper.pruner",
        "+hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:2.0}",
        "hydra.sweeper.importance=null",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    study = _study(sweep)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    results = yaml.safe_load((sweep / "optuna_study.yaml").read_text())
    assert results["trials"] == {"pruned": 2} and "importances" not in results
    for trial in study.trials:
        assert trial.user_attrs["pruned_at_epoch"] == 0
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert metrics["epochs"] == 1


def test_a_search_space_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    run = run_cli("cnnlab.train", *TINY, f"hydra.sweep.dir={tmp_path}", "+hydra.sweeper.params.x=3")
    assert run.returncode == 2
    assert "x=3 is not a search space" in run.stderr


def test_an_importance_evaluator_that_cannot_be_built_is_refused_before_any_trial(
    tmp_path: Path,
) -> None:
    cases = [
        ("._target_=optuna.importance.NoSuchEvaluator", "cannot be built"),
        ("._target_=optuna.samplers.RandomSampler", "is a RandomSampler, not an importance"),
        ("=optuna.importance.PedAnovaImportanceEvaluator", "is not a _target_ config"),
    ]
    if importlib.util.find_spec("sklearn") is None:  # fANOVA's dependency (not in dev)
        cases.append(("._target_=optuna.importance.FanovaImportanceEvaluator", "cannot be built"))
    for number, (override, message) in enumerate(cases):
        sweep = tmp_path / str(number)
        run = run_cli("cnnlab.train", *TINY, f"hydra.sweep.dir={sweep}",
                      f"hydra.sweeper.importance{override}")  # fmt: skip
        assert run.returncode == 2, run.stderr[-3000:]
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], run.stderr[-3000:]
        assert "or hydra.sweeper.importance=null" in lines[0]
        assert not (sweep / "optuna.journal").exists() and not (sweep / "0").exists()


def test_the_study_summary_survives_too_few_trials_and_a_failing_evaluator(
    tmp_path: Path,
) -> None:
    from optuna.importance import BaseImportanceEvaluator, PedAnovaImportanceEvaluator

    from cnnlab.optuna_summary import write_summary

    class Broken(BaseImportanceEvaluator):
        def evaluate(self, study: optuna.Study, params: object = None, **kw: object) -> dict:
            raise TypeError("no importances here")

    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.7, 0.6):
        trial = study.ask()
        trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
        study.tell(trial, value)
        results_file = tmp_path / "optuna_study.yaml"
        evaluator = PedAnovaImportanceEvaluator() if len(study.trials) < 3 else Broken()
        write_summary(study, tmp_path, evaluator)
        results = yaml.safe_load(results_file.read_text())
        assert results["best"]["value"] == 0.7 or len(study.trials) == 1
        if len(study.trials) < 3:  # evenly split by construction: not written as a finding
            assert results["importances"] == "not available: fewer than 3 completed trials"
            assert results["importance_evaluator"] == "PedAnovaImportanceEvaluator"
    assert results["importances"] == "not available: TypeError: no importances here"
    assert results["trials"] == {"complete": 3} and results["best"]["trial"] == 1


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_open_storage(storage: str, tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal") if storage == "journal" else f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="a", storage=open_storage(url)).optimize(lambda t: 1.0, 2)
    assert len(optuna.load_study(study_name="a", storage=open_storage(url)).trials) == 2
