"""The model zoo: every preset composes, builds with the published parameter count and trains."""

from __future__ import annotations

import copy
import functools
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnlab.build import build_model
from cnnlab.config import validate_config
from cnnlab.errors import ConfigError
from cnnlab.models.base import DataInitialized, ImageClassifier
from cnnlab.models.common import count_parameters
from cnnlab.models.dlwpt import ConvStage, DlwptNet
from cnnlab.models.resnet import ResNet18Transfer

from conftest import compose_config, model_expectation, offline, presets, synthetic_data

# (in_channels, image_size, num_classes) of datasets the presets were published on
CIFAR10 = (3, 32, 10)
CIFAR2 = (3, 32, 2)
MNIST = (1, 28, 10)
CELEBA = (3, 64, 2)
CATS_DOGS = (3, 128, 2)


@functools.cache
def model_config(preset: str, shape: tuple[int, int, int], extra: tuple[str, ...] = ()) -> Any:
    """The composed train config for ``preset`` on data of ``shape`` (cached; copy before use)."""
    cfg = compose_config(f"model={preset}", *synthetic_data(*shape), *extra)
    if offline(cfg) and not any(o.startswith("model.pretrained") for o in extra):
        return model_config(preset, shape, (*extra, *offline(cfg)))  # never download in tests
    return cfg


def build(preset: str, shape: tuple[int, int, int], *extra: str) -> nn.Module:
    return build_model(copy.deepcopy(model_config(preset, shape, tuple(extra))))


@pytest.mark.parametrize("preset", presets("model"))
def test_preset_parameters_output_and_backward(preset: str, tmp_path: Path) -> None:
    expect = model_expectation(preset)
    cfg = compose_config(f"model={preset}", *expect["data"])
    cfg = compose_config(f"model={preset}", *expect["data"], *offline(cfg), output_dir=tmp_path)
    validate_config(cfg)  # the presets pass the framework's config checks
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, ImageClassifier), "models follow cnnlab.models.base.ImageClassifier"
    assert count_parameters(model) == expect["params"]
    assert model.num_outputs == expect["outputs"]

    channels, size, classes = cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes
    x = torch.randn(3, channels, size, size)
    y = torch.arange(3) % classes
    model.train()
    logits = model(x)
    assert logits.shape == (3, expect["outputs"])
    if expect["outputs"] == 1:
        loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())
    else:
        loss = F.cross_entropy(logits, y)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    if isinstance(model, DataInitialized):  # the optional data-driven init changes the model
        before = copy.deepcopy(model.state_dict())
        model.init_from_data(torch.randn(16, channels, size, size))
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_res_deep_tied_blocks_share_one_block() -> None:
    tied = build("dlwpt_res_deep", CIFAR2)
    untied = build("dlwpt_res_deep", CIFAR2, "model.tie_blocks=false")
    assert count_parameters(tied) == 75_810
    assert count_parameters(untied) == 994_530
    tied_blocks = tied.features[-1].blocks
    untied_blocks = untied.features[-1].blocks
    assert len(tied_blocks) == len(untied_blocks) == 100
    assert tied_blocks[0] is tied_blocks[99]
    assert untied_blocks[0].conv.weight is not untied_blocks[99].conv.weight
    assert not torch.equal(untied_blocks[0].conv.weight, untied_blocks[99].conv.weight)
    block = untied_blocks[5]
    assert block.conv.bias is None
    assert torch.all(block.batch_norm.weight == 0.5)
    assert torch.all(block.batch_norm.bias == 0)
    # Kaiming normal (fan_in, relu): std = sqrt(2 / (32 * 3 * 3)) = 0.0833
    assert block.conv.weight.std().item() == pytest.approx((2 / 288) ** 0.5, rel=0.1)


def test_res_deep_flatten_follows_image_size() -> None:
    # 48x48: conv, pool -> 24, blocks, pool -> 12: fc 32*12*12 -> 32 instead of 2048 -> 32.
    model = build("dlwpt_res_deep", (3, 48, 2))
    assert model.classifier[1].in_features == 32 * 12 * 12
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 2)


def test_residual_stage_adds_its_input_before_pooling() -> None:
    stage = ConvStage(4, 4, "relu", residual=True)
    plain = ConvStage(4, 4, "relu", residual=False)
    for s in (stage, plain):
        nn.init.zeros_(s.conv.weight)
        nn.init.zeros_(s.conv.bias)
    x = torch.randn(2, 4, 8, 8)
    # relu(conv(x)) is 0, so the residual stage is pool(x) and the plain one pool(0).
    assert torch.equal(stage(x), F.max_pool2d(x, 2))
    assert torch.equal(plain(x), torch.zeros(2, 4, 4, 4))
    model = build("dlwpt_res", CIFAR2)
    assert [s.residual for s in model.features] == [False, False, True]


def test_dlwpt_variants_have_the_published_layers() -> None:
    dropout = build("dlwpt_dropout", CIFAR2)
    assert [type(s.dropout) for s in dropout.features] == [nn.Dropout2d, nn.Dropout2d]
    assert dropout.features[0].dropout.p == 0.4
    batchnorm = build("dlwpt_batchnorm", CIFAR2)
    assert [s.norm.num_features for s in batchnorm.features] == [32, 16]
    depth = build("dlwpt_depth", CIFAR2)
    assert [s.conv.out_channels for s in depth.features] == [32, 16, 16]
    assert isinstance(depth.features[0].act, nn.ReLU)
    assert depth.classifier[1].in_features == 16 * 4 * 4
    assert isinstance(build("dlwpt_net", CIFAR2).features[0].act, nn.Tanh)


def test_residual_needs_three_stages() -> None:
    with pytest.raises(ConfigError, match=r"model\.depth >= 3"):
        DlwptNet(3, 2, 32, width=32, depth=2, residual=True)


def test_smile_cnn_is_binary_only_for_two_classes() -> None:
    from cnnlab.module import ClassifierModule

    binary = build("mlpt_smile_cnn", CELEBA)
    assert binary.num_outputs == 1
    module = ClassifierModule(binary, optimizer=functools.partial(torch.optim.Adam), num_classes=2)
    assert module.binary
    five = build("mlpt_smile_cnn", (3, 64, 5))
    assert five.num_outputs == 5
    assert five(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert count_parameters(five) == 388_673 - 257 + 256 * 5 + 5


def test_cats_dogs_dropout_sits_after_the_fourth_block() -> None:
    model = build("nb_cats_dogs_cnn", CATS_DOGS)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds.index("Dropout") == 4
    assert model.layers[4].p == 0.5
    last = model.layers[-2]
    assert [type(m) for m in last] == [nn.Conv2d, nn.BatchNorm2d]  # the last block has no ReLU
    assert [type(m) for m in model.layers[0]] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]


@pytest.mark.parametrize(
    ("preset", "shape", "match"),
    [
        ("dlwpt_res_deep", (3, 2, 2), "dlwpt_net cannot take 3x2x2"),
        ("dlwpt_depth", (3, 4, 2), "dlwpt_net cannot take 3x4x4"),
        ("mlpt_smile_cnn", (3, 4, 2), "smile_cnn cannot take 3x4x4"),
        ("gdl_convnet", (3, 1, 10), "strided_convnet cannot take 3x1x1"),
        ("nb_mnist_cnn", (1, 128, 10), r"to 2x2, so the output has 40 values.*at most 64 pixels"),
        ("nb_cats_dogs_cnn", (3, 512, 2), r"to 2x2.*at most 256 pixels"),
    ],
)
def test_impossible_shapes_give_a_clear_config_error(
    preset: str, shape: tuple[int, int, int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build(preset, shape)


def test_all_conv_last_channel_must_be_the_class_count() -> None:
    with pytest.raises(ConfigError, match=r"must equal the number of classes \(10\)"):
        build("nb_mnist_cnn", MNIST, "model.channels=[4,8,16,32,64,2]")


def test_per_layer_knob_of_wrong_length() -> None:
    with pytest.raises(ConfigError, match=r"model\.stride=\[1, 2\] has 2 entries"):
        build("gdl_cnn", CIFAR10, "model.stride=[1,2]")


# ---- ResNet-18 transfer ------------------------------------------------------------------------
def _backbone_state(model: ResNet18Transfer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith("fc.")}


def _train_step(model: nn.Module, lr: float = 0.5) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=0.01)
    model.train()
    x = torch.randn(4, 3, 32, 32) * 3 + 1  # far from the BN running stats (0, 1)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_resnet_trains_only_its_head_and_keeps_bn_stats() -> None:
    torch.manual_seed(0)
    model = build("resnet18", (3, 32, 2))
    assert count_parameters(model) == 1_026
    model.train()
    bns = [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.training and model.net.fc.training
    before = _backbone_state(model)
    head_before = model.net.fc.weight.clone()
    _train_step(model)
    after = _backbone_state(model)
    assert before.keys() == after.keys()
    assert "bn1.running_mean" in after and "layer4.1.bn2.running_var" in after
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.net.fc.weight)


def test_unfrozen_resnet_updates_backbone_and_bn_stats() -> None:
    torch.manual_seed(0)
    model = build("resnet18", (3, 32, 2), "model.freeze_backbone=false")
    assert count_parameters(model) == 11_177_538
    before = _backbone_state(model)
    _train_step(model, lr=0.01)
    after = _backbone_state(model)
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_resnet_pretrained_offline_gives_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []

    def offline(request: object, *args: object, **kwargs: object) -> None:
        calls.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: a download is attempted
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ConfigError, match=r"could not download.*model\.weights_path=<file\.pth>"):
        build("resnet18", CATS_DOGS, "model.pretrained=true")
    assert calls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]


def test_a_tampered_cached_imagenet_file_is_refused_without_running(tmp_path: Path) -> None:
    from test_data_safety import payload

    marker = tmp_path / "ran"
    cached = tmp_path / "hub" / "checkpoints"
    cached.mkdir(parents=True)
    name = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    (cached / name).write_bytes(payload(marker))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path))
        with pytest.raises(ConfigError, match=rf"refused to load .*{name}.*Delete it"):
            build("resnet18", CATS_DOGS, "model.pretrained=true")
    assert not marker.exists()


def test_resnet_loads_local_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)  # same keys as the ImageNet file
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build("resnet18", (3, 32, 2), f"model.weights_path={path}")
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.net.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.net.fc.out_features == 2
    assert count_parameters(model) == 1_026


def test_resnet_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build("resnet18", CATS_DOGS, f"model.weights_path={tmp_path / 'missing.pth'}")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="not a torchvision ResNet-18 state dict"):
        build("resnet18", CATS_DOGS, f"model.weights_path={wrong}")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="truncated or not a PyTorch checkpoint"):
        build("resnet18", CATS_DOGS, f"model.weights_path={garbage}")


def test_resnet_accepts_grey_images_only_without_imagenet_weights(tmp_path: Path) -> None:
    model = build("resnet18", (1, 32, 2), "model.freeze_backbone=false")
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="expect 3-channel images"):
        build("resnet18", (1, 32, 2), f"model.weights_path={path}")
