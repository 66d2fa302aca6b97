"""Every config composes and instantiates; bad values are caught with one clear message."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import instantiate

from cnnlab.build import build_module
from cnnlab.config import validate_config
from cnnlab.errors import ConfigError
from forkrun import run_module

from conftest import (
    CONFIG_DIR,
    Compose,
    model_expectation,
    offline,
    presets,
    run_cli,
    train_in_process,
)


@pytest.mark.parametrize(
    "group", ["optimizer", "scheduler", "trainer", "logger", "callbacks", "module"]
)
def test_every_option_of_the_training_groups_instantiates(group: str, compose: Compose) -> None:
    for option in presets(group):
        if option == "mlflow" and importlib.util.find_spec("mlflow") is None:
            continue  # the optional extra; tests/test_tensorboard_loggers.py covers it when present
        cfg = compose(f"{group}={option}")
        node = cfg[group]
        if group in ("logger", "callbacks"):
            built = [instantiate(c) for c in node.values() if c]
            assert all(b is not None for b in built), option
        elif group in ("scheduler", "module"):
            module = build_module(cfg)
            module.trainer = L.Trainer(max_steps=10, logger=False, enable_progress_bar=False)
            setup = module.configure_optimizers()
            assert module.num_classes == 10
            if option == "none":
                assert isinstance(setup, torch.optim.Optimizer)
            elif group == "scheduler":
                assert setup["lr_scheduler"]["interval"] == node.interval
        else:
            assert instantiate(node) is not None, option


# Values a data config leaves for the user to set (`???`), as a user would give them.
REQUIRED_DATA = {
    "image_folder": ["data.root=/nowhere", "data.class_names=[cat,dog]", "data.image_size=32"],
}


@pytest.mark.parametrize("data", presets("data"))
def test_every_data_config_composes_and_instantiates(data: str, compose: Compose) -> None:
    cfg = compose(f"data={data}", *REQUIRED_DATA.get(data, []))
    validate_config(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    assert datamodule.num_classes == len(cfg.data.class_names)


def _models_of_experiments() -> set[str]:
    """The model presets some experiment trains as they are (``override /model: <preset>``
    and no ``model:`` values of its own)."""
    used = set()
    for name in presets("experiment"):
        text = yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
        for entry in text.get("defaults", []):
            if isinstance(entry, dict) and "override /model" in entry and "model" not in text:
                used.add(entry["override /model"])
    return used


# Presets an experiment trains unchanged run in tests/test_experiments.py, on its data.
@pytest.mark.parametrize("model", sorted(set(presets("model")) - _models_of_experiments()))
def test_every_model_preset_runs_a_fast_dev_run(
    model: str, compose: Compose, tmp_path: Path
) -> None:
    overrides = [
        f"model={model}",
        *model_expectation(model)["data"],
        "data.num_train=64",
        "data.num_test=16",
        "data.batch_size=8",
        "+trainer.fast_dev_run=true",
    ]
    overrides += offline(compose(*overrides))
    metrics = train_in_process(overrides, tmp_path)
    assert metrics["status"] == "completed"
    assert metrics["global_step"] == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not valid: it must be a positive number"),
        ("optimizer.lr=fast", "optimizer.lr='fast' is not valid"),
        ("data.batch_size=0", "data.batch_size=0 is not valid: it must be an integer >= 1"),
        ("data.batch_size=2.5", "data.batch_size=2.5 is not valid"),
        ("model.dropout=1.0", "model.dropout=1.0 is not valid: it must be a probability in [0, 1)"),
        ("model.dropout=-0.2", "model.dropout=-0.2 is not valid"),
        ("data.val_split=1.5", "data.val_split=1.5 is not valid"),
        ("monitor_mode=up", "monitor_mode='up' is not valid: it must be 'min' or 'max'"),
        ("module.l2_lambda=-1", "module.l2_lambda=-1 is not valid"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not valid"),
        ("trainer.max_steps=0", "trainer.max_steps=0 is not valid: it must be -1 (no limit)"),
        ("trainer.max_steps=2.5", "trainer.max_steps=2.5 is not valid"),
        ("trainer.max_steps=true", "trainer.max_steps=True is not valid"),
        ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum=1.5 is not valid"),
        ("module.norm_lr_scale=0", "module.norm_lr_scale=0 is not valid: it must be a positive"),
        ("module.label_smoothing=1", "module.label_smoothing=1 is not valid"),
        ("module.eval_norm=train", "module.eval_norm='train' is not valid"),
        ("module.eval_dropout=1", "module.eval_dropout=1 is not valid: it must be true or false"),
        ("module.bias_weight_decay=-1", "module.bias_weight_decay=-1 is not valid"),
        ("+model.head.dropout=[0.2,1.2]", "model.head.dropout.1=1.2 is not valid"),
        ("model=gdl_cnn model.dropout=2", "model.dropout=2 is not valid: it must be a probability"),
    ],
)
def test_impossible_values_are_named_before_any_work(
    override: str, message: str, compose: Compose
) -> None:
    cfg = compose(*override.split())
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value)


def test_a_val_split_that_leaves_no_data_is_refused(compose: Compose) -> None:
    cfg = compose("data.val_split=5000")
    datamodule = instantiate(cfg.data, _convert_="all")
    with pytest.raises(ConfigError, match=r"data.val_split=5000 takes .* leaves no data"):
        datamodule.setup("fit")


def test_a_missing_required_value_is_named(compose: Compose) -> None:
    cfg = compose("optimizer.lr=???")
    with pytest.raises(ConfigError, match=r"\['optimizer.lr'\] are not set"):
        validate_config(cfg)
    # also when other values interpolate the missing ones (model.image_size: ${data.image_size})
    cfg = compose("data=image_folder")
    with pytest.raises(ConfigError, match=r"'data.class_names', 'data.image_size', 'data.root'"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=no_such_model"], "Could not find 'model/no_such_model'"),
        (["no_such_key=1"], "Could not override 'no_such_key'"),
        (["optimizer.lr=-1"], "optimizer.lr=-1 is not valid"),
        (["data.batch_size=0"], "data.batch_size=0 is not valid"),
    ],
)
def test_cli_config_errors_exit_2_with_one_message(
    args: list[str], message: str, tmp_path: Path
) -> None:
    run = run_cli("cnnlab.train", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run" / "checkpoints").exists(), "no training may start"


def test_a_user_config_directory_from_the_environment(tmp_path: Path) -> None:
    mine = tmp_path / "myconf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "tiny_mlp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mlp\ntags: [mine]\n"
    )
    env = {**os.environ, "CNNLAB_CONFIG_DIR": str(mine)}
    shown = run_module("cnnlab.train", ["experiment=tiny_mlp", "--cfg", "job"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "cnnlab.models.mlp.MLP" in shown.stdout and "- mine" in shown.stdout
    env["CNNLAB_CONFIG_DIR"] = str(tmp_path / "nowhere")
    missing = run_module("cnnlab.train", [], tmp_path, env)
    assert missing.returncode == 2
    assert "CNNLAB_CONFIG_DIR" in missing.stderr and "nowhere" in missing.stderr
    assert not (tmp_path / "outputs").exists(), "nothing written on a config error"


def test_l2_penalty_is_added_to_the_loss_and_distinct_from_weight_decay(compose: Compose) -> None:
    cfg = compose("module.l2_lambda=0.01")
    module = build_module(cfg)
    expected = sum((p.detach() ** 2).sum() for p in module.model.parameters())
    assert torch.allclose(module.l2_penalty(), expected)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    module.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with_penalty = module.training_step((x, y), 0)
    module.l2_lambda = 0.0
    without = module.training_step((x, y), 0)
    assert torch.allclose(with_penalty - without, 0.01 * expected)
    optimizer = module.configure_optimizers()
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)


def test_weight_decay_exemption_of_biases_and_norm_weights(compose: Compose) -> None:
    cfg = compose(
        "module.norm_weight_decay=0",
        "module.bias_weight_decay=0",
        "optimizer=adamw",
        "model.batchnorm=true",
    )
    module = build_module(cfg)
    decay, norm, bias = module.configure_optimizers().param_groups
    assert decay["weight_decay"] == 0.01 and norm["weight_decay"] == bias["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    n_exempt = sum(
        1
        for m in module.model.modules()
        for n, _ in m.named_parameters(recurse=False)
        if n == "bias" or isinstance(m, torch.nn.BatchNorm2d)
    )
    assert len(norm["params"]) + len(bias["params"]) == n_exempt > 0
    assert len(norm["params"]) > 0 and len(bias["params"]) > 0
    default = build_module(compose("optimizer=adamw"))
    assert len(default.configure_optimizers().param_groups) == 1


def test_monitor_is_interpolated_everywhere(compose: Compose) -> None:
    cfg = compose(
        "monitor=val/loss", "monitor_mode=min", "callbacks=early_stopping", "scheduler=plateau"
    )
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert cfg.callbacks.model_checkpoint.mode == "min"
    assert cfg.callbacks.early_stopping.monitor == "val/loss"
    assert cfg.scheduler.monitor == "val/loss"
    assert cfg.scheduler.mode == "min"
