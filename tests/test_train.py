"""End-to-end behaviour of cnnlab.train, eval and summary on the bundled digits data."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cnnlab.errors import ConfigError
from cnnlab.eval import evaluate
from cnnlab.module import ClassifierModule

from conftest import Compose, presets, run_cli, train_in_process


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The default experiment, trained once for the tests of this module."""
    out = tmp_path_factory.mktemp("digits") / "run"
    return out, train_in_process([], out)


def test_default_experiment_reaches_95_percent(digits_run: tuple[Path, dict]) -> None:
    _, metrics = digits_run
    assert metrics["status"] == "completed"
    assert metrics["val/acc_best"] >= 0.95
    assert metrics["test/acc"] >= 0.95


def test_run_directory_holds_everything(digits_run: tuple[Path, dict]) -> None:
    out, metrics = digits_run
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert list(out.glob("events.out.tfevents.*"))
    assert list((out / "hparams").glob("events.out.tfevents.*"))
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "lightning" in env and "git_commit" in env
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "best_epoch",
        "test/loss",
        "test/acc",
        "params",
        "wall_time_s",
    ):
        assert saved[key] is not None, key
    assert saved["params"] == 53002
    assert 0 <= saved["best_epoch"] < saved["epochs"] == 10


def test_tensorboard_has_scalars_and_hparams(digits_run: tuple[Path, dict]) -> None:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out, _ = digits_run
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    tags = {t for run in mux.Runs().values() for t in run.get("scalars", [])}
    assert {"train/loss_step", "train/loss", "train/acc", "val/loss", "val/acc"} <= tags
    assert any(t.startswith("lr-") for t in tags)
    assert {"hp/val/acc_best", "hp/test/acc"} <= tags
    hparams_tags = {t for run in mux.PluginRunToTagToContent("hparams").values() for t in run}
    # No experiment summary: TensorBoard computes the columns over all the logdir's runs.
    assert hparams_tags == {"_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_eval_of_best_checkpoint_reproduces_logged_val_accuracy(
    digits_run: tuple[Path, dict],
) -> None:
    out, metrics = digits_run
    result = evaluate([f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}", "split=val"])
    assert result["metrics"]["val/acc"] == pytest.approx(metrics["val/acc_best"], abs=1e-6)
    test = evaluate([f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}"])
    assert test["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    saved = sorted((out / "eval").glob("best-*.json"))
    assert len(saved) == 2, "each evaluation gets its own file next to the run"
    # Any other key=value changes the run config saved in the checkpoint ...
    best, elsewhere = f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}", f"output_dir={out}.eval"
    mirrored = evaluate([best, "split=val", "module.eval_flip_tta=true", elsewhere])
    assert mirrored["changes"] == ["module.eval_flip_tta=true"]
    assert mirrored["metrics"]["val/loss"] != pytest.approx(result["metrics"]["val/loss"])
    # ... and what training would refuse is refused, one message each, before any data is read
    # or file written: a key the config lacks, a deletion, a whole section, a sweep, a bad value.
    refused = {
        "module.eval_fllp_tta=true": "'module.eval_fllp_tta=true' is neither a key of",
        "~module.eval_norm": "'~module.eval_norm' is neither a key of",
        "data=cifar10": "would replace the whole 'data' section",
        "seed=1,2": "'seed=1,2' is a sweep",
        "module.eval_dropout=yes": "module.eval_dropout='yes' is not valid",
        "module.eval_norm=": "module.eval_norm='' is not valid",
    }
    for change, message in refused.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            evaluate([best, change, f"output_dir={out}.refused"])
    assert not Path(f"{out}.refused").exists()
    # written as on the training command line: + and ++ set an existing key too
    plus = evaluate([best, "split=val", "+module.eval_flip_tta=true", elsewhere])
    assert plus["metrics"]["val/loss"] == pytest.approx(mirrored["metrics"]["val/loss"])


def test_resume_from_last_checkpoint_continues_at_the_right_epoch(tmp_path: Path) -> None:
    first = train_in_process(["trainer.max_epochs=2"], tmp_path / "a")
    assert first["epochs"] == 2
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    resumed = train_in_process([f"ckpt_path={last}", "trainer.max_epochs=4"], tmp_path / "b")
    assert resumed["epochs"] == 4
    assert resumed["global_step"] == 2 * first["global_step"]
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == resumed["global_step"], "last.ckpt holds the final state"


def test_deterministic_runs_give_identical_metrics(tmp_path: Path) -> None:
    overrides = ["trainer.max_epochs=2", "trainer.deterministic=true", "seed=7"]
    a = train_in_process(overrides, tmp_path / "a")
    b = train_in_process(overrides, tmp_path / "b")
    keys = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    c = train_in_process([*overrides[:2], "seed=8"], tmp_path / "c")
    assert c["train/loss"] != a["train/loss"], "the seed must change the run"


@pytest.mark.parametrize("optimizer", presets("optimizer"))
@pytest.mark.parametrize("scheduler", presets("scheduler"))
def test_every_optimizer_and_scheduler_trains(
    optimizer: str, scheduler: str, tmp_path: Path
) -> None:
    extra = ["optimizer.lr=0.05", "optimizer.momentum=0.9"] if optimizer == "sgd" else []
    metrics = train_in_process(
        [
            f"optimizer={optimizer}",
            f"scheduler={scheduler}",
            "trainer.max_epochs=2",
            "optimizer.weight_decay=0.001",
            "logger=none",
            *extra,
        ],
        tmp_path,
    )
    assert metrics["status"] == "completed"
    assert metrics["val/acc"] > 0.3, "two epochs on digits learn something with any optimizer"


# What the command-line tests need of a run: its files and record, not a whole epoch.
FEW_BATCHES = [
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def test_cli_train_and_summary(tmp_path: Path) -> None:
    run = run_cli(
        "cnnlab.train",
        "trainer.max_epochs=1",
        *FEW_BATCHES,
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        f"hydra.run.dir={tmp_path / 'cli'}",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    overrides = (tmp_path / "cli" / ".hydra" / "overrides.yaml").read_text()
    assert "optimizer.nesterov=true" in overrides
    summary = run_cli("cnnlab.summary", "data=synthetic", "data.image_size=32")
    assert summary.returncode == 0, summary.stderr[-2000:]
    # conv 3->32 (896) + conv 32->64 (18,496) + fc 4096->128 (524,416) + fc 128->4 (516)
    assert "total_params: 544324" in summary.stdout
    assert "[2, 64, 8, 8]" in summary.stdout


def test_multirun_writes_one_directory_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli(
        "cnnlab.train", "-m", "seed=1,2", "trainer.max_epochs=1", *FEW_BATCHES,
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
    assert not (sweep / "2").exists()


def test_run_directories_live_under_outputs(compose: Compose) -> None:
    cfg = compose()
    assert cfg.hydra.run.dir.startswith("outputs/runs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/multiruns/")
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_fused_optimizers_make_the_same_updates_as_the_per_parameter_loop(
    optimizer: str, compose: Compose
) -> None:
    momentum = ["optimizer.momentum=0.9", "optimizer.nesterov=true"] if optimizer == "sgd" else []
    cfg = compose(f"optimizer={optimizer}", "optimizer.weight_decay=0.01", *momentum)
    assert cfg.optimizer.fused is True, "fused kernels are the default"
    torch.manual_seed(0)
    reference = torch.nn.Linear(8, 3)
    results = []
    for fused in (True, False):
        model = copy.deepcopy(reference)
        opt = instantiate(cfg.optimizer, fused=fused)(params=model.parameters())
        for step in range(5):
            torch.manual_seed(step)
            model(torch.randn(4, 8)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(results[0], torch.cat([p.flatten() for p in reference.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_an_unsupported_fused_optimizer_names_the_setting() -> None:
    def no_fused_kernels(params: object) -> None:
        raise RuntimeError("`fused=True` requires all the params to be on supported devices")

    module = ClassifierModule(torch.nn.Linear(4, 3), optimizer=no_fused_kernels, num_classes=3)
    with pytest.raises(ConfigError, match=r"optimizer\.fused=false"):
        module.configure_optimizers()


def test_load_model_and_load_from_checkpoint_predict_as_eval_does(
    digits_run: tuple[Path, dict],
) -> None:
    import cnnlab
    from cnnlab.build import build_datamodule
    from cnnlab.checkpoint import read_checkpoint, saved_config

    out, _ = digits_run
    best = out / "checkpoints" / "best.ckpt"
    reported = evaluate([f"ckpt_path={best}"])["metrics"]["test/acc"]
    model = cnnlab.load_model(best)
    assert isinstance(model, torch.nn.Module) and not model.training
    lightning_module = ClassifierModule.load_from_checkpoint(best, weights_only=True)
    assert lightning_module.hparams["model"]["_target_"] == "cnnlab.models.convnet.ConvNet"
    lightning_module.eval()
    datamodule = build_datamodule(saved_config(read_checkpoint(best), best))
    datamodule.setup("test")
    correct = total = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            # The data module's own device-side preparation (e.g. uint8 -> normalized float).
            x, y = datamodule.on_after_batch_transfer(batch, 0)
            preds = model(x).argmax(-1)
            assert torch.equal(lightning_module(x).argmax(-1), preds)
            correct += int((preds == y).sum())
            total += len(y)
    assert correct / total == pytest.approx(reported)
    assert cnnlab.load_module(best).best_val_acc == read_checkpoint(best)["cnnlab"]["best_val_acc"]


def test_eval_norm_batch_normalizes_with_batch_statistics_and_keeps_the_running_ones(
    compose: Compose,
) -> None:
    import lightning as L

    from cnnlab.build import build_module

    modules = {}
    for mode in ("running", "batch"):
        torch.manual_seed(0)
        modules[mode] = build_module(compose("model.batchnorm=true", f"module.eval_norm={mode}"))
    norms = [m for m in modules["batch"].model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for module in modules.values():
        module.eval()
        module.trainer = L.Trainer(logger=False, enable_progress_bar=False)
    x, y = torch.rand(16, 1, 8, 8) * 4, torch.arange(16) % 10
    before = copy.deepcopy(modules["batch"].state_dict())
    # The published behaviour: the same network with its normalization layers in train mode.
    reference = copy.deepcopy(modules["batch"].model)
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    expected = torch.nn.functional.cross_entropy(reference(x), y)
    for module in modules.values():
        module.validation_step((x, y), 0)
    batch_loss = modules["batch"].val_loss.compute()
    assert torch.allclose(batch_loss, expected)
    assert not torch.allclose(modules["running"].val_loss.compute(), batch_loss)
    after = modules["batch"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics untouched"
    assert all(not m.training and m.track_running_stats for m in norms)


def test_eval_dropout_keeps_dropout_active_in_evaluation_only(compose: Compose) -> None:
    import lightning as L

    from cnnlab.build import build_module

    module = build_module(compose("model.dropout=0.5", "module.eval_dropout=true")).eval()
    module.trainer = L.Trainer(logger=False, enable_progress_bar=False)
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 10
    losses = []
    for _ in range(2):
        module.validation_step((x, y), 0)
        losses.append(module.val_loss.compute())
        module.val_loss.reset()
    assert not torch.allclose(losses[0], losses[1]), "each evaluation drops other units"
    dropouts = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts), "modes restored afterwards"
    with torch.no_grad():
        assert torch.equal(module.model(x), module.model(x)), "plain eval mode is untouched"


def test_eval_dropout_measures_the_same_training_another_way(tmp_path: Path) -> None:
    """Its masks are drawn from the training stream, which is put back: the weights are those
    of eval_dropout=false, and only the validation numbers differ."""
    tiny = ["model.dropout=0.5", "trainer.max_epochs=2", "logger=none"]
    tiny += ["trainer.deterministic=true"]
    runs = {
        flag: train_in_process([*tiny, f"module.eval_dropout={flag}"], tmp_path / flag)
        for flag in ("false", "true")
    }
    weights = {
        flag: torch.load(tmp_path / flag / "checkpoints" / "last.ckpt", weights_only=True)
        for flag in runs
    }
    plain, dropped = (weights[f]["state_dict"] for f in ("false", "true"))
    assert all(torch.equal(plain[k], dropped[k]) for k in plain)
    assert runs["true"]["train/loss"] == runs["false"]["train/loss"]
    assert runs["true"]["val/loss"] != runs["false"]["val/loss"]


def test_earlier_configs_are_read_in_todays_keys() -> None:
    from cnnlab.config_upgrade import upgrade

    module = {"_target_": "cnnlab.module.ClassifierModule"}
    decayed = upgrade({"module": {**module, "decay_norm_and_bias": True}})["module"]
    assert decayed["norm_weight_decay"] is None and decayed["bias_weight_decay"] is None
    exempt = upgrade({"module": {**module, "decay_norm_and_bias": False}})["module"]
    assert exempt["norm_weight_decay"] == exempt["bias_weight_decay"] == 0.0
    assert exempt["eval_norm"] == "running" and "decay_norm_and_bias" not in exempt
    # a user's own module class gets nothing of ClassifierModule's
    assert upgrade({"module": {"_target_": "my.Module"}}) == {"module": {"_target_": "my.Module"}}


def test_data_configs_written_before_the_data_redesign_build_the_same_data(
    tmp_path: Path,
) -> None:
    """Data sections as the first versions composed them (the run config of a checkpoint then)."""
    from omegaconf import OmegaConf

    from cnnlab.build import build_datamodule
    from cnnlab.config_upgrade import upgrade
    from datafiles import write_image_folder

    write_image_folder(tmp_path / "folder", classes=("airplane", "bird"), size=(32, 32))
    folder = {  # data=cifar10_jpeg then (as run for dlwpt_res_deep), with its values resolved
        "_target_": "cnnlab.data.image_folder.image_folder_datamodule",
        "name": "cifar10_jpeg",
        "root": str(tmp_path / "folder"),
        "missing_help": None,
        "class_names": ["airplane", "bird"],
        "num_classes": 2,
        "in_channels": 3,
        "image_size": 32,
        "in_memory": True,
        "cache_dir": str(tmp_path / "cache"),
        "on_bad_image": "skip",
        "decode_workers": None,
        "eval_transforms": None,
        "train_transforms": None,
        "num_workers": 4,
        "persistent_workers": True,
        "batch_size": 64,
        "eval_batch_size": 1000,
        "classes": ["airplane", "bird"],
        "test_split": 0.2,
        "val_split": "test",
        "val_split_mode": "random",
        "split_seed": 0,
        "seed": 0,
        "shuffle": True,
        "drop_last": False,
        "pin_memory": True,
        "keep_on_device": "auto",
        "device_memory_fraction": 0.5,
        "log_augmented_grid": False,
        "grid_samples": 64,
        "normalize": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "augment": {"_target_": "cnnlab.data.augment.BatchAugment", "hflip": False},
    }
    for in_memory, storage in ((True, "memory"), (False, "files")):
        config = upgrade({"data": {**folder, "in_memory": in_memory}})
        dm = build_datamodule(OmegaConf.create(config))
        dm.setup("fit")
        assert dm.storage.kind == storage
        assert {k: len(v) for k, v in dm.splits.items()} == {"train": 19, "val": 5, "test": 5}
    # CIFAR-10's module read the official pickles only: a JPEG copy must not stand in for them
    cifar = upgrade({"data": {"_target_": "cnnlab.data.cifar.CIFAR10DataModule", "root": "x"}})
    assert cifar["data"]["copy"] == "pickles"


def test_checkpoints_of_earlier_versions_still_load(
    digits_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """Run configs saved before the flat scheduler keys and the weight-decay knobs."""
    import cnnlab
    from cnnlab.checkpoint import read_checkpoint

    out, metrics = digits_run
    checkpoint = read_checkpoint(out / "checkpoints" / "best.ckpt")
    config = checkpoint["cnnlab"]["config"]
    config["module"].pop("norm_weight_decay")
    config["module"].pop("bias_weight_decay")
    config["module"]["decay_norm_and_bias"] = False
    for added in ("eval_norm", "eval_dropout", "eval_translate_tta", "tta_in_validation"):
        config["module"].pop(added)
    # the data module of the versions before one ClassificationDataModule, with its own keys
    data = config["data"]
    assert data.pop("source") == "cnnlab.data.digits.DigitsSource"
    assert data.pop("storage") == "memory"
    transforms = data.pop("transforms")
    data["train_transforms"], data["eval_transforms"] = transforms["train"], transforms["eval"]
    data["_target_"] = "cnnlab.data.digits.DigitsDataModule"
    config["scheduler"] = {
        "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2},
        "interval": "epoch",
    }
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    module = cnnlab.load_module(old)
    assert module.norm_weight_decay == module.bias_weight_decay == 0.0
    assert module.scheduler_config == {
        "_target_": "torch.optim.lr_scheduler.StepLR",
        "step_size": 2,
        "interval": "epoch",
    }
    # Keys added since take the value that does what the old run did, and can be changed.
    added = (module.eval_norm, module.eval_dropout, module.eval_translate_tta)
    assert added == ("running", False, 0) and module.tta_in_validation
    same = evaluate([f"ckpt_path={old}", f"output_dir={tmp_path}"])
    assert same["metrics"]["test/acc"] == metrics["test/acc"], "its data is rebuilt as it was"
    changed = evaluate([f"ckpt_path={old}", "module.eval_norm=batch", f"output_dir={tmp_path}"])
    assert changed["changes"] == ["module.eval_norm=batch"]
