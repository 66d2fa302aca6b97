"""Parts of the cifar10_fast recipe: airbench net, data init, lr scaling, smoothing, TTA."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.build import build_datamodule, build_model, build_module
from cnnlab.callbacks import FreezeAfter, Lookahead
from cnnlab.data.source import TensorSplit
from cnnlab.errors import ConfigError
from cnnlab.models.airbench import AirbenchNet
from cnnlab.module import ClassifierModule

from conftest import compose_config, train_in_process


@pytest.mark.parametrize("center", [False, True])
def test_whitening_filters_decorrelate_the_patches_they_were_fitted_on(center: bool) -> None:
    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.8, 0.3], [0.0, 0.5, 0.9], [0.2, 0.0, 0.4]])
    # correlated channels, off-centre (a mean the uncentered form keeps in its second moment)
    images = torch.einsum("ij,njhw->nihw", mixing, torch.randn(64, 3, 16, 16)) + 0.7
    model = AirbenchNet(
        num_classes=10, image_size=16, widths=[8, 8], whiten_eps=1e-6, whiten_center=center
    )
    model.init_from_data(images)
    outputs = F.conv2d(images, model.whiten.weight[:12])  # the filters without their negatives
    flat = outputs.permute(1, 0, 2, 3).reshape(12, -1)
    # airbench (center=false) whitens the second moment E[z z^T]; center=true the covariance
    moment = torch.cov(flat) if center else flat @ flat.T / flat.shape[1]
    assert torch.allclose(moment, torch.eye(12), atol=0.05)
    other = flat @ flat.T / flat.shape[1] if center else torch.cov(flat)
    assert not torch.allclose(other, torch.eye(12), atol=0.05)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    assert not model.whiten.weight.requires_grad
    assert torch.equal(model.whiten.bias, torch.zeros(24))  # airbench's conv biases start at 0


def test_a_fresh_fit_initializes_the_stem_from_training_images_and_a_resume_keeps_it(
    tmp_path: Path,
) -> None:
    overrides = [
        "model=airbench",
        "model.widths=[8,8]",
        "model.data_init_images=40",
        "data=synthetic",
        "data.image_size=16",
        "data.in_channels=3",
        "trainer.max_epochs=1",
        "logger=none",
    ]
    train_in_process(overrides, tmp_path / "run")
    cfg = compose_config(*overrides)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    expected = build_model(cfg)
    expected.init_from_data(dm.sample_train_images(40))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.allclose(state["state_dict"]["model.whiten.weight"], expected.whiten.weight)

    module = ClassifierModule(expected, optimizer=torch.optim.SGD, num_classes=4)
    calls = []
    module.model.init_from_data = calls.append
    module._trainer = SimpleNamespace(ckpt_path="last.ckpt", datamodule=dm)
    module.on_fit_start()
    assert calls == [], "a resumed run keeps the filters of its checkpoint"
    module._trainer = SimpleNamespace(ckpt_path=None, datamodule=dm)
    module.on_fit_start()
    assert len(calls) == 1 and calls[0].shape == (40, 3, 16, 16)


def test_the_stem_is_fitted_on_a_seeded_sample_of_all_classes_not_the_first_images() -> None:
    # A folder dataset lists its images class by class: the first ones are all of one class.
    dm = build_datamodule(compose_config("data=synthetic", "data.image_size=4", "data.seed=7"))
    dm.setup("fit")
    labels = torch.arange(4).repeat_interleave(50)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).to(torch.uint8) * 60
    dm.splits["train"] = TensorSplit(images, labels)
    sample = dm.sample_train_images(40)
    assert sample.shape == (40, 3, 4, 4)
    assert len(torch.unique(sample[:, 0, 0, 0])) == 4, "every class is in the sample"
    assert torch.equal(sample, dm.sample_train_images(40)), "the same sample each time"
    dm.seed = 8
    assert not torch.equal(sample, dm.sample_train_images(40))
    assert len(dm.sample_train_images(500)) == 200, "at most the whole training set"


def test_norm_lr_scale_keeps_its_ratio_under_one_cycle() -> None:
    cfg = compose_config(
        "model=airbench",
        "model.widths=[8,8]",
        "data=synthetic",
        "data.image_size=16",
        "optimizer=sgd",
        "optimizer.lr=0.5",
        "optimizer.weight_decay=0.01",
        "scheduler=onecycle",
        "module.norm_lr_scale=64",
    )
    module = build_module(cfg)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    weights, special = optimizer.param_groups
    bn_biases = {id(m.bias) for m in module.model.modules() if isinstance(m, nn.BatchNorm2d)}
    # BN weights are frozen in airbench; the stem's conv bias keeps the base lr, as there
    assert {id(p) for p in special["params"]} == bn_biases
    assert any(p is module.model.whiten.bias for p in weights["params"])
    assert special["weight_decay"] == pytest.approx(0.01 / 64)
    for _ in range(4):
        assert special["lr"] == pytest.approx(64 * weights["lr"])
        optimizer.step()
        scheduler.step()


def test_label_smoothing_softens_the_training_loss_only() -> None:
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    module = ClassifierModule(nn.Linear(2, 3), optimizer=torch.optim.SGD, num_classes=3)
    loss, _ = module._loss_and_preds(logits, targets, smoothing=0.2)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, label_smoothing=0.2))
    binary = ClassifierModule(nn.Linear(2, 1), optimizer=torch.optim.SGD, num_classes=2)
    binary.binary = True
    loss, _ = binary._loss_and_preds(logits[:, :1], targets.clamp(max=1), smoothing=0.2)
    soft = targets.clamp(max=1).float() * 0.8 + 0.1
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits[:, 0], soft))


def test_flip_tta_evaluates_the_mean_logits_of_image_and_mirror() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    averaged = (model(x) + model(x.flip(-1))) / 2
    for tta, logits in ((False, model(x)), (True, averaged)):
        make = functools.partial(ClassifierModule, model, torch.optim.SGD, 3, eval_flip_tta=tta)
        module = make()
        module._eval_step((x, y), "val")
        assert torch.allclose(module.val_loss.compute(), F.cross_entropy(logits, y))


def test_tta_in_validation_false_keeps_the_tta_for_the_test_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    averaged = (model(x) + model(x.flip(-1))) / 2
    module = ClassifierModule(
        model, torch.optim.SGD, 3, eval_flip_tta=True, tta_in_validation=False
    )
    module._eval_step((x, y), "val")
    module._eval_step((x, y), "test")
    assert torch.allclose(module.val_loss.compute(), F.cross_entropy(model(x), y))
    assert torch.allclose(module.test_loss.compute(), F.cross_entropy(averaged, y))


def test_translate_tta_weighs_the_image_half_and_each_diagonal_shift_a_quarter() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :4, :4], padded[..., 2:, 2:]
    assert torch.equal(up_left[..., 1:, 1:], x[..., :3, :3])  # content moved down-right by one

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return (model(v) + model(v.flip(-1))) / 2

    expected = mirrored(x) / 2 + (mirrored(up_left) + mirrored(down_right)) / 4
    module = ClassifierModule(model, torch.optim.SGD, 3, eval_flip_tta=True, eval_translate_tta=1)
    module._eval_step((x, y), "test")
    assert torch.allclose(module.test_loss.compute(), F.cross_entropy(expected, y))


def test_freeze_after_trains_the_stem_bias_for_its_epochs_only(tmp_path: Path) -> None:
    module = ClassifierModule(
        AirbenchNet(num_classes=3, image_size=16, widths=[8]), torch.optim.SGD, 3
    )
    freeze = FreezeAfter(["model.whiten.bias"], epochs=2)
    for epoch, trains in ((0, True), (1, True), (2, False), (3, False), (1, True)):
        freeze.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        assert module.model.whiten.bias.requires_grad is trains
    with pytest.raises(ConfigError, match=r"model\.whiten\.bais"):
        FreezeAfter(["model.whiten.bais"], 1).on_train_epoch_start(
            SimpleNamespace(current_epoch=0), module
        )


def test_lookahead_starts_at_its_epoch_pulls_towards_a_slow_average_and_ends_epochs_on_it() -> None:
    module = ClassifierModule(nn.Linear(2, 2), optimizer=torch.optim.SGD, num_classes=2)
    weight = module.model.weight
    start = weight.detach().clone()
    lookahead = Lookahead(decay=0.5, every_n_steps=2, ramp_power=1.0, start_epoch=1)
    # 3 batches an epoch, 9 steps in all
    trainer = SimpleNamespace(
        global_step=0, estimated_stepping_batches=9, current_epoch=0, num_training_batches=3
    )
    lookahead.on_train_start(trainer, module)

    def moved(by: float) -> None:
        with torch.no_grad():
            weight.add_(by)

    def batch_end(index: int = 0) -> None:
        lookahead.on_train_batch_end(trainer, module, None, None, index)

    def train_step(step: int, index: int = 0) -> None:
        moved(1.0)  # what the optimizer did
        trainer.global_step, trainer.current_epoch = step, (step - 1) // 3
        batch_end(index)

    for step in (1, 2, 3):  # step 2 is a lookahead step, but before start_epoch
        train_step(step, index=step - 1)
    assert lookahead.slow is None and torch.allclose(weight, start + 3)
    train_step(4)  # the first lookahead step from start_epoch: the slow copy
    assert torch.allclose(lookahead.slow["weight"], start + 4)
    train_step(5)
    train_step(6)  # d = 0.5 * 6 / 9: slow moves 2/3 of the way to start + 6
    slow = start + 4 + 2 / 3 * 2
    assert torch.allclose(weight, slow)
    for _ in range(2):  # accumulated batches of the next step see step 6 again: no pull
        moved(10.0)
        batch_end()
    assert torch.allclose(weight, slow + 20)

    # resumed from a checkpoint at step 6: its first batch (accumulating) is no new step either
    lookahead = Lookahead(decay=0.5, every_n_steps=2, ramp_power=1.0, start_epoch=1)
    lookahead.load_state_dict({"slow": {"weight": slow.clone(), "bias": module.model.bias}})
    lookahead.on_train_start(trainer, module)
    with torch.no_grad():
        weight.copy_(slow)
    moved(10.0)
    batch_end()
    assert torch.allclose(weight, slow + 10)
    train_step(7, index=2)  # not a lookahead step, but the epoch's last batch: back to slow
    assert torch.allclose(weight, slow), "the epoch ends on the slow weights"
    train_step(8)  # d = 0.5 * 8 / 9
    slow = slow + 5 / 9 * 1
    assert torch.allclose(weight, slow)
    train_step(9)  # max_steps ends the run mid-epoch: on the slow weights too
    assert torch.allclose(weight, slow)
    with pytest.raises(ConfigError, match="start_epoch=-1"):
        Lookahead(start_epoch=-1)


def test_cifar10_fast_trains_with_lookahead_and_checkpoints_its_slow_weights(
    tmp_path: Path,
) -> None:
    overrides = [
        "experiment=cifar10_fast",
        "data=synthetic",
        "data.image_size=16",
        "data.batch_size=32",
        "data.num_train=160",
        "model.widths=[8,8]",
        "model.data_init_images=64",
        "trainer.max_epochs=2",
        "callbacks.lookahead.start_epoch=0",
        "logger=none",
    ]
    metrics = train_in_process(overrides, tmp_path)
    assert metrics["status"] == "completed" and metrics["global_step"] == 10  # 160 // 32 x 2
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    slow = state["callbacks"]["Lookahead"]["slow"]
    for name, value in slow.items():
        assert torch.equal(state["state_dict"][f"model.{name}"], value), name
