"""The CIFAR model zoo: exact parameter counts (METHODS.md), declared ports vs real tensors,
pre-activation semantics per family, reference state-dict layouts, and torchvision by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdgraph.catalog import load_builtins
from kdgraph.errors import CheckpointError
from kdgraph.nets.shufflenet import channel_shuffle
from kdgraph.registry import NETS

load_builtins()

# name -> (parameters with 100 classes, stage channels feat0..featN); METHODS.md is the ground truth
ZOO: dict[str, tuple[int, list[int]]] = {
    "resnet8": (83_892, [16, 16, 32, 64]),
    "resnet14": (181_108, [16, 16, 32, 64]),
    "resnet20": (278_324, [16, 16, 32, 64]),
    "resnet32": (472_756, [16, 16, 32, 64]),
    "resnet44": (667_188, [16, 16, 32, 64]),
    "resnet56": (861_620, [16, 16, 32, 64]),
    "resnet110": (1_736_564, [16, 16, 32, 64]),
    "resnet8x4": (1_233_540, [32, 64, 128, 256]),
    "resnet32x4": (7_433_860, [32, 64, 128, 256]),
    "wrn_16_1": (180_916, [16, 16, 32, 64]),
    "wrn_16_2": (703_284, [16, 32, 64, 128]),
    "wrn_40_1": (569_780, [16, 16, 32, 64]),
    "wrn_40_2": (2_255_156, [16, 32, 64, 128]),
    "vgg8": (3_965_028, [64, 128, 256, 512, 512]),
    "vgg11": (9_277_284, [64, 128, 256, 512, 512]),
    "vgg13": (9_462_180, [64, 128, 256, 512, 512]),
    "vgg16": (14_774_436, [64, 128, 256, 512, 512]),
    "vgg19": (20_086_692, [64, 128, 256, 512, 512]),
    "MobileNetV2": (812_836, [16, 12, 16, 48, 160]),  # channels: mdistiller's stage_channels x 0.5
    "ShuffleV1": (949_258, [24, 240, 480, 960]),
    "ShuffleV2": (1_355_528, [24, 116, 232, 464]),
    "ResNet18": (11_220_132, [64, 64, 128, 256, 512]),
    # not in METHODS.md: the well-known CIFAR-10 count 21,282,122 plus 90 x 513 for 100 classes
    "ResNet34": (21_328_292, [64, 64, 128, 256, 512]),
    "ResNet50": (23_705_252, [64, 256, 512, 1024, 2048]),
}
ALIASES = {"mobilenetv2": "MobileNetV2", "mobile_half": "MobileNetV2"}

# how preactK relates to featK (see each module's docstring)
RELU_FAMILIES = ("resnet", "vgg", "ShuffleV1", "ResNet")


def build(name: str, **kw) -> torch.nn.Module:
    return NETS.get(name).obj(**kw)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_parameter_count_matches_methods(name: str) -> None:
    with torch.device("meta"):  # no memory, no init cost
        net = build(name)
    assert sum(p.numel() for p in net.parameters()) == ZOO[name][0]


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases(alias: str) -> None:
    with torch.device("meta"):
        net = build(alias)
    assert sum(p.numel() for p in net.parameters()) == ZOO[ALIASES[alias]][0]


def _check_preact(name: str, net: torch.nn.Module, out: dict[str, torch.Tensor], n: int) -> None:
    for k in range(n):
        feat, pre = out[f"feat{k}"], out[f"preact{k}"]
        if k == 0 and not name.startswith("wrn"):  # the reference's stem entry is post-ReLU
            assert torch.equal(pre, feat) and feat.min() >= 0
        elif name.startswith(RELU_FAMILIES):
            assert torch.equal(F.relu(pre), feat)
        elif name.startswith("wrn"):  # the BN the next layer applies (eval mode: running stats)
            if k == 0:
                assert torch.equal(pre, feat)
            else:
                bn = (net.block2.layer[0].bn1, net.block3.layer[0].bn1, net.bn1)[k - 1]
                torch.testing.assert_close(pre, bn(feat))
        elif name == "ShuffleV2":  # equal up to the channel shuffle
            assert torch.equal(channel_shuffle(F.relu(pre), 2), feat)
        elif name == "MobileNetV2":  # linear bottlenecks: nothing before a ReLU to report
            assert torch.equal(pre, feat)
        else:
            raise AssertionError(f"no preact rule for {name}")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_ports_match_real_tensors(name: str) -> None:
    torch.manual_seed(0)
    net = build(name).eval()
    info = net.port_info()
    channels = ZOO[name][1]
    n = len(channels)
    assert set(info) == {"logits", "pooled"} | {f"{p}{k}" for p in ("feat", "preact") for k in range(n)}
    assert [info[f"feat{k}"].channels for k in range(n)] == channels
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net.forward_ports(x, frozenset(info))
    assert set(out) == set(info)
    for port, pi in info.items():
        t = out[port]
        if pi.kind == "map":
            assert t.shape == (2, pi.channels, 32 // pi.stride, 32 // pi.stride), port
        else:
            assert t.shape == (2, pi.channels), port
    assert info["logits"].channels == 100
    _check_preact(name, net, out, n)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1"])
def test_forward_returns_the_logits_port(name: str) -> None:
    net = build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.forward_ports(x, frozenset({"logits"}))["logits"])


def test_only_requested_stages_run() -> None:
    net = build("resnet8").eval()
    calls: list[str] = []
    net.layer2.register_forward_hook(lambda *a: calls.append("layer2"))
    net.fc.register_forward_hook(lambda *a: calls.append("fc"))
    out = net.forward_ports(torch.randn(2, 3, 32, 32), frozenset({"preact1"}))
    assert set(out) == {"preact1"} and calls == []
    net.forward_ports(torch.randn(2, 3, 32, 32), frozenset({"pooled"}))
    assert calls == ["layer2", "fc"]


def test_wrn_runs_each_bn_once_when_preacts_are_wanted() -> None:
    net = build("wrn_16_1").train()
    bn = net.block2.layer[0].bn1
    net.forward_ports(torch.randn(2, 3, 32, 32), frozenset(net.port_info()))
    assert int(bn.num_batches_tracked) == 1


def test_in_channels_num_classes_and_small_inputs() -> None:
    # digits-style input: 1 channel, 8x8; global pooling makes every CIFAR net size-agnostic
    for name in ("resnet8", "wrn_16_1", "ShuffleV2"):
        net = build(name, num_classes=10, in_channels=1).eval()
        with torch.no_grad():
            assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vgg_pools_before_block4_on_64px_like_the_reference() -> None:
    net = build("vgg8").eval()
    with torch.no_grad():
        out = net.forward_ports(torch.randn(1, 3, 64, 64), frozenset({"feat3", "feat4"}))
    assert out["feat3"].shape[-1] == 8 and out["feat4"].shape[-1] == 4


# a few keys of the reference implementations (RepDistiller / mdistiller models/)
SENTINELS = {
    "resnet8x4": ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                  "layer3.0.downsample.1.num_batches_tracked", "fc.weight"],
    "resnet56": ["layer3.8.bn2.bias", "fc.bias"],
    "wrn_40_2": ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                 "block3.layer.5.conv2.weight", "bn1.running_var", "fc.weight"],
    "vgg13": ["block0.0.bias", "block0.4.running_mean", "block4.4.weight", "classifier.weight"],
    "vgg8": ["block0.0.weight", "block0.1.weight", "block4.1.bias", "classifier.bias"],
    "MobileNetV2": ["conv1.0.weight", "conv1.1.running_var", "blocks.0.0.conv.7.weight",
                    "blocks.6.0.conv.3.weight", "conv2.0.weight", "classifier.0.weight"],
    "ShuffleV1": ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.bias", "linear.weight"],
    "ShuffleV2": ["layer1.0.conv5.weight", "layer1.0.bn5.bias", "layer3.3.conv3.weight", "conv2.weight",
                  "bn2.weight", "linear.weight"],
    "ResNet18": ["conv1.weight", "bn1.bias", "layer1.1.conv2.weight", "layer2.0.shortcut.0.weight",
                 "layer4.1.bn2.running_var", "linear.weight"],
    "ResNet50": ["layer1.0.conv3.weight", "layer1.0.shortcut.1.weight", "layer4.2.bn3.bias", "linear.bias"],
}
ABSENT = {
    "resnet8x4": ["linear.weight"],
    "resnet56": ["layer1.0.downsample.0.weight"],  # 16 -> 16: identity shortcut
    "vgg13": ["block0.2.weight", "pool4.weight", "classifier.0.weight"],
    "wrn_40_2": ["block2.layer.1.convShortcut.weight"],
    "ResNet18": ["layer1.0.shortcut.0.weight", "fc.weight"],
}


@pytest.mark.parametrize("name", sorted(SENTINELS))
def test_reference_state_dict_layout(name: str) -> None:
    with torch.device("meta"):
        keys = set(build(name).state_dict())
    assert set(SENTINELS[name]) <= keys
    assert not set(ABSENT.get(name, [])) & keys


def test_docstrings_give_one_line_descriptions() -> None:
    for name in [*ZOO, *ALIASES, "tv/resnet18"]:
        assert NETS.get(name).description, name


# ---- torchvision by name ------------------------------------------------------------------------


def test_every_torchvision_classifier_is_registered() -> None:
    from torchvision import models as tvm

    names = {n for n in NETS.names() if n.startswith("tv/")}
    assert names == {f"tv/{n}" for n in tvm.list_models(module=tvm)}
    for required in ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b0", "vgg11_bn",
                     "shufflenet_v2_x1_0", "densenet121", "convnext_tiny"):
        assert f"tv/{required}" in names
    assert {"num_classes", "in_channels", "weights"} <= set(NETS.get("tv/resnet18").parameters())


def test_torchvision_builds_with_new_head_and_channels() -> None:
    net = build("tv/resnet18", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert "layer4.1.conv2.weight" in net.state_dict()  # torchvision's own layout, for taps and checkpoints


def test_torchvision_weights_missing_names_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        build("tv/resnet18", weights="IMAGENET1K_V1")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in str(err.value) and "https://download.pytorch.org" in str(err.value)
    with pytest.raises(CheckpointError, match="IMAGENET1K_V1"):
        build("tv/resnet18", weights="IMAGENET9K")


def test_torchvision_weights_load_from_the_cache(tmp_path, monkeypatch) -> None:
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    src = resnet18()  # stands in for the ImageNet file: same layout, 1000 classes
    torch.save(src.state_dict(), folder / "resnet18-f37072fd.pth")
    net = build("tv/resnet18", num_classes=100, weights="DEFAULT")
    assert torch.equal(net.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert net.fc.out_features == 100
    same = build("tv/resnet18", num_classes=1000, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(same.fc.weight, src.fc.weight)
