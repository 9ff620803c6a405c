"""The ImageNet models: sizes, layer policies, forward at every bit-width, loading float weights.

Parameter counts: a model built with bits_list=[32] holds exactly the parameters of its float
architecture plus one PACT alpha per quantized layer; the float-equivalent count leaves the alphas
out. The switchable overhead of a bits_list of k entries is then exactly (k - 1) extra BN
gamma/beta per BatchNorm plus k alphas per layer that quantizes its input (every conv and linear
but the weight-only first conv).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _original_layouts import original_mobilenet_layout, random_state_dict
from torch import nn

import adabits
from adabits import QConv2d, QLinear
from adabits.engine import build_config
from adabits.engine.build import load_pretrained
from adabits.errors import CheckpointError
from adabits.models import remap_state_dict

IMAGENET_MODELS = ("mobilenet_v1", "mobilenet_v2", "resnet18", "resnet34", "resnet50")
#: parameter counts of the standard float architectures at 1000 classes (torchvision's for the
#: ResNets and MobileNet V2; MobileNet V1: "4.2 M" in its paper, exactly 4,231,976 with BN gamma/beta
#: and the classifier bias, as Keras counts its trainable parameters)
FLOAT_PARAMS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
}
FLOAT_32 = {"clamp": False, "rescale": False, "rescale_conv": False}


def float_equivalent_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("alpha"))


def quant_layers(model: nn.Module) -> list[QConv2d | QLinear]:
    return [m for m in model.modules() if isinstance(m, (QConv2d, QLinear))]


@pytest.fixture(scope="module")
def float_models() -> dict[str, nn.Module]:
    return {name: adabits.create_model(name, bits_list=[32]) for name in IMAGENET_MODELS}


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_float_parameter_count_matches_the_standard_architecture(name: str, float_models) -> None:
    assert name in adabits.list_models()
    assert float_equivalent_params(float_models[name]) == FLOAT_PARAMS[name]


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_switchable_overhead_is_one_bn_and_one_alpha_per_bit_width(name: str, float_models) -> None:
    float_model = float_models[name]
    bn_affine = sum(2 * m.num_features for m in float_model.modules() if isinstance(m, nn.BatchNorm2d))
    clipped = [m for m in quant_layers(float_model) if m.alpha is not None]
    assert len(clipped) == len(quant_layers(float_model)) - 1  # all but the weight-only first conv
    total = sum(p.numel() for p in float_model.parameters())
    assert total == FLOAT_PARAMS[name] + len(clipped)  # bits_list [32]: one alpha per layer

    k = 4
    model = adabits.create_model(name, bits_list=[8, 6, 5, 4])
    assert sum(p.numel() for p in model.parameters()) == FLOAT_PARAMS[name] + (k - 1) * bn_affine + k * len(clipped)
    shared = adabits.create_model(name, bits_list=[8, 6, 5, 4], stats_sharing=True, switch_alpha=False)
    assert sum(p.numel() for p in shared.parameters()) == FLOAT_PARAMS[name] + len(clipped)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet18", "resnet50"])  # 34: the blocks of 18
def test_forward_at_every_bit_width(name: str) -> None:
    torch.manual_seed(0)
    model = adabits.create_model(name, bits_list=[8, 6, 5, 4], num_classes=7).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        outputs = {}
        for bits in (8, 6, 5, 4):
            adabits.set_bits(model, bits)
            outputs[bits] = model(images)
            assert outputs[bits].shape == (2, 7) and torch.isfinite(outputs[bits]).all()
    assert not torch.allclose(outputs[8], outputs[4])


def test_training_step_reaches_every_parameter_kind() -> None:
    model = adabits.create_model("mobilenet_v2", bits_list=[4, 3], num_classes=5, width_mult=0.35)
    for bits in (4, 3):
        adabits.set_bits(model, bits)
        model(torch.randint(0, 256, (2, 3, 32, 32)).float()).logsumexp(1).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["features.2.conv.0.0.alpha"].abs().sum() > 0
    assert grads["features.2.conv.0.1.bn.1.weight"].abs().sum() > 0
    assert grads["classifier.1.weight"].abs().sum() > 0


@pytest.mark.parametrize("name,first,last", [
    ("mobilenet_v1", "features.0.0", "classifier.1"),
    ("mobilenet_v2", "features.0.0", "classifier.1"),
    ("resnet18", "conv1", "fc"),
])
def test_first_and_last_layer_policy(name: str, first: str, last: str) -> None:
    model = adabits.create_model(name, bits_list=[4, 3, 2], num_classes=10, pact_fp=True)
    modules = dict(model.named_modules())
    stem, head = modules[first], modules[last]
    assert stem.weight_only and stem.alpha is None and stem.bitw_min == 8 and stem.bita_min == 8
    assert head.bitw_min == 8 and head.pact_fp
    adabits.set_bits(model, 2)
    assert (stem.weight_bits, stem.act_bits) == (8, 32) and head.weight_bits == 8 and head.act_bits == 2
    inner = [m for m in quant_layers(model) if m is not stem and m is not head]
    assert {m.weight_bits for m in inner} == {2} and {m.act_bits for m in inner} == {2}


def test_mobilenet_v2_relu_residuals_and_double_side_placement() -> None:
    model = adabits.create_model("mobilenet_v2", bits_list=[4], double_side=True)
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    blocks = list(model.features)[1:-1]
    assert sum(block.use_res_connect for block in blocks) == 10  # stride 1 and cin == cout
    signed = {name for name, m in model.named_modules() if isinstance(m, (QConv2d, QLinear)) and m.double_side}
    expected = {"features.1.conv.0.0", "features.18.0"}  # t == 1: the depthwise conv; the 1280 conv
    expected |= {f"features.{i}.conv.0.0" for i in range(2, 18)}  # the expand convs
    assert signed == expected
    plain = adabits.create_model("mobilenet_v2", bits_list=[4])
    assert not any(m.double_side for m in quant_layers(plain))
    relu6 = adabits.create_model("mobilenet_v2", bits_list=[32], activation="relu6")
    assert sum(isinstance(m, nn.ReLU6) for m in relu6.modules()) == 35
    with pytest.raises(ValueError, match="allowed: relu, relu6"):
        adabits.create_model("mobilenet_v2", activation="gelu")


def test_width_mult_follows_torchvision_rounding() -> None:
    narrow = adabits.create_model("mobilenet_v2", bits_list=[32], width_mult=0.5)
    assert narrow.features[0][0].out_channels == 16 and narrow.features[1].conv[1].out_channels == 8
    assert narrow.last_channel == 1280
    wide = adabits.create_model("mobilenet_v2", bits_list=[32], width_mult=1.4)
    assert wide.features[0][0].out_channels == 48 and wide.last_channel == 1792
    v1 = adabits.create_model("mobilenet_v1", bits_list=[32], width_mult=0.25)
    assert v1.classifier[1].in_features == 256
    with pytest.raises(ValueError, match="width_mult must be positive"):
        adabits.create_model("mobilenet_v1", width_mult=0)


def test_initialisation(float_models) -> None:
    torch.manual_seed(0)
    model = adabits.create_model("resnet50", bits_list=[32], classifier_std=0.01)
    conv = model.layer3[2].conv2
    assert conv.weight.std().item() == pytest.approx((2 / (3 * 3 * conv.out_channels)) ** 0.5, rel=0.05)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05) and torch.all(model.fc.bias == 0)
    bn = model.layer1[0].bn1.bn[0]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    default = float_models["mobilenet_v2"].classifier[1].weight.std().item()
    assert default == pytest.approx(1.0, rel=0.05)  # DEFAULT_CLASSIFIER_STD, see docs/models.md


# ---------------------------------------------------------------- loading float weights


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine values, so that a lost BN would change the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0, 0.2, generator=generator)
    return model


def load_through_engine(name: str, path: Path, **model_options) -> tuple[nn.Module, list[str]]:
    """A [32, 4] switchable model given `path` as fp_pretrained_file, the way `train` loads it."""
    cfg = build_config({"model": name, "bits_list": [32, 4], "num_classes": 10, "dataset": "synthetic",
                        "fp_pretrained_file": str(path), "model_options": model_options, **FLOAT_32})
    model = adabits.create_model(name, bits_list=[32, 4], num_classes=10, **FLOAT_32, **model_options)
    return model, load_pretrained(model, cfg)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_own_float_checkpoint_reproduces_the_float_model_at_32_bits(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    float_model = randomize_bn(adabits.create_model(name, bits_list=[32], num_classes=10, **FLOAT_32)).eval()
    torch.save({"model": float_model.state_dict()}, tmp_path / "fp.pt")
    model, notes = load_through_engine(name, tmp_path / "fp.pt")
    assert notes == [f"loaded full-precision weights from {tmp_path / 'fp.pt'}"]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    adabits.set_bits(model, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), float_model(x))
        adabits.set_bits(model, 4)
        assert not torch.allclose(model(x), float_model(x), rtol=1e-3, atol=1e-3)


# torchvision's state-dict layouts, restated from torchvision/models/resnet.py and mobilenetv2.py
# (key names and shapes only, independently of our models).
def _bn(prefix: str, channels: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    for key in ("weight", "bias", "running_mean", "running_var"):
        yield f"{prefix}.{key}", (channels,)
    yield f"{prefix}.num_batches_tracked", ()


def torchvision_resnet_layout(bottleneck: bool, depths: tuple[int, ...], num_classes: int):
    expansion = 4 if bottleneck else 1
    yield "conv1.weight", (64, 3, 7, 7)
    yield from _bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), depths)):
        for index in range(blocks):
            p = f"layer{stage + 1}.{index}"
            stride = 2 if stage > 0 and index == 0 else 1
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for number, (cout, cin, k) in enumerate(convs, 1):
                yield f"{p}.conv{number}.weight", (cout, cin, k, k)
                yield from _bn(f"{p}.bn{number}", cout)
            if stride != 1 or inplanes != planes * expansion:
                yield f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1)
                yield from _bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    yield "fc.weight", (num_classes, 512 * expansion)
    yield "fc.bias", (num_classes,)


TORCHVISION_V2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                          [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def torchvision_mobilenet_v2_layout(num_classes: int):
    yield "features.0.0.weight", (32, 3, 3, 3)
    yield from _bn("features.0.1", 32)
    index, inp = 1, 32
    for t, c, n, _ in TORCHVISION_V2_SETTING:
        for _ in range(n):
            hidden, p, j = inp * t, f"features.{index}.conv", 0
            if t != 1:
                yield f"{p}.0.0.weight", (hidden, inp, 1, 1)
                yield from _bn(f"{p}.0.1", hidden)
                j = 1
            yield f"{p}.{j}.0.weight", (hidden, 1, 3, 3)
            yield from _bn(f"{p}.{j}.1", hidden)
            yield f"{p}.{j + 1}.weight", (c, hidden, 1, 1)
            yield from _bn(f"{p}.{j + 2}", c)
            index, inp = index + 1, c
    yield f"features.{index}.0.weight", (1280, inp, 1, 1)
    yield from _bn(f"features.{index}.1", 1280)
    yield "classifier.1.weight", (num_classes, 1280)
    yield "classifier.1.bias", (num_classes,)


TORCHVISION_LAYOUTS = {
    "resnet18": lambda: torchvision_resnet_layout(False, (2, 2, 2, 2), 10),
    "resnet34": lambda: torchvision_resnet_layout(False, (3, 4, 6, 3), 10),
    "resnet50": lambda: torchvision_resnet_layout(True, (3, 4, 6, 3), 10),
    "mobilenet_v2": lambda: torchvision_mobilenet_v2_layout(10),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_LAYOUTS))
def test_torchvision_layout_loads_without_missing_or_unexpected_keys(name: str, tmp_path: Path) -> None:
    sd = random_state_dict(TORCHVISION_LAYOUTS[name]())
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "tv.pth")
    model, notes = load_through_engine(name, tmp_path / "tv.pth")
    assert notes == [f"loaded full-precision weights from {tmp_path / 'tv.pth'}"]
    float_model = adabits.create_model(name, bits_list=[32], num_classes=10, **FLOAT_32)
    float_model.load_state_dict(remap_state_dict(float_model, sd), strict=True)
    assert torch.equal(dict(model.named_parameters())["fc.weight" if "resnet" in name else "classifier.1.weight"],
                       sd["fc.weight" if "resnet" in name else "classifier.1.weight"])
    x = torch.randn(2, 3, 32, 32)
    model.eval(), float_model.eval()
    adabits.set_bits(model, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), float_model(x))


@pytest.mark.parametrize("name,activation", [("resnet18", None), ("resnet50", None), ("mobilenet_v2", "relu6")])
def test_torchvision_model_saved_to_disk_is_reproduced_at_32_bits(name: str, activation: str | None,
                                                                   tmp_path: Path) -> None:
    """torchvision's own float model and ours, after loading its weights, agree (ReLU6 for MobileNet V2)."""
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = randomize_bn(getattr(models, name)(num_classes=10)).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    options = {"activation": activation} if activation else {}
    model, notes = load_through_engine(name, tmp_path / "tv.pth", **options)
    assert notes == [f"loaded full-precision weights from {tmp_path / 'tv.pth'}"]
    model.eval()
    adabits.set_bits(model, 32)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


# the original AdaBits code's MobileNets (tests/_original_layouts.py), trained with bits_list [32]
@pytest.mark.parametrize("version", [1, 2])
def test_original_code_mobilenet_checkpoint_is_renamed(version: int, tmp_path: Path) -> None:
    sd = random_state_dict(original_mobilenet_layout(version))
    sd = {k: (v.abs() + 1 if k.endswith("alpha") else v) for k, v in sd.items()}
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "original.pt")
    name = f"mobilenet_v{version}"
    model, notes = load_through_engine(name, tmp_path / "original.pt")
    # the original gave its first conv a (never used) alpha; ours has none, and the key map drops it
    assert notes == [f"loaded full-precision weights from {tmp_path / 'original.pt'}"]
    last_block = "features.13.3" if version == 1 else "features.17.conv.2"
    source = "stage_4_layer_1.body.3" if version == 1 else "stage_6_layer_0.body.6"
    layer = dict(model.named_modules())[last_block]
    assert torch.equal(layer.weight, sd[f"{source}.weight"])
    assert torch.equal(layer.alpha, sd[f"{source}.alpha"].expand(2))


def test_a_checkpoint_naming_a_missing_block_is_refused(tmp_path: Path) -> None:
    torch.save({"stage_9_layer_0.body.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: stage_9_layer_0 does not exist"):
        load_through_engine("mobilenet_v2", tmp_path / "bad.pt")


@pytest.mark.parametrize("alias,name", [
    ("models.q_mobilenet_v1", "mobilenet_v1"), ("models.q_mobilenet_v2", "mobilenet_v2"),
    ("models.q_resnet50", "resnet50"), ("models.q_resnet_cifar", "resnet_cifar"),
])
def test_model_aliases_of_the_original_resolve(alias: str, name: str) -> None:
    assert build_config({"model": alias}).model == name
