"""quantize_model on arbitrary networks and loading float checkpoints."""

import pytest
import torch
from torch import nn

import adabits
from adabits import QConv2d, QLinear, QuantConfig, SwitchBatchNorm2d


class HandMadeCNN(nn.Module):
    """A network written the ordinary way: nested modules, a depthwise conv, biases, a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.ModuleDict({
            "dw": nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
            "bn": nn.BatchNorm2d(16),
            "pw": nn.Conv2d(16, 16, 1),
        })
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 5))
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block["pw"](torch.relu(self.block["bn"](self.block["dw"](x))))
        return self.head(self.pool(torch.relu(x)))


def test_every_layer_is_swapped_and_runs_at_every_bit_width() -> None:
    model = adabits.quantize_model(HandMadeCNN(), bits_list=[8, 6, 4, 32])
    kinds = [type(m) for m in model.modules()]
    assert nn.Conv2d not in kinds and nn.Linear not in kinds
    assert kinds.count(nn.BatchNorm2d) == 2 * 4  # only inside the switchable BNs, one per bit-width
    assert kinds.count(QConv2d) == 3 and kinds.count(QLinear) == 2 and kinds.count(SwitchBatchNorm2d) == 2
    x = torch.randn(2, 3, 16, 16)
    outputs = {}
    for bits in (8, 6, 4, 32):
        adabits.set_bits(model, bits)
        outputs[bits] = model(x)
        outputs[bits].sum().backward()
    assert not torch.allclose(outputs[8], outputs[4])


def test_first_and_last_layer_policy_and_overrides() -> None:
    model = adabits.quantize_model(HandMadeCNN(), bits_list=[4, 3, 2])
    first, last = model.stem[0], model.head[3]
    assert first.weight_only and first.bitw_min == 8 and first.bita_min == 8 and first.alpha is None
    assert last.bitw_min == 8 and not last.weight_only
    adabits.set_bits(model, 2)
    assert (first.weight_bits, first.act_bits) == (8, 32) and last.weight_bits == 8
    assert model.block["pw"].weight_bits == 2

    model = adabits.quantize_model(
        HandMadeCNN(), bits_list=[4, 2],
        layer_options={"stem.0": {"weight_only": False}, "head.3": {"quantize": False}},
    )
    assert not model.stem[0].weight_only and type(model.head[3]) is nn.Linear
    model = adabits.quantize_model(HandMadeCNN(), bits_list=[4, 2], first_last_policy=False)
    assert not model.stem[0].weight_only and model.head[3].bitw_min == 1


def test_bad_layer_options_are_named() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        adabits.quantize_model(HandMadeCNN(), [4], layer_options={"nope": {"bitw_min": 8}})
    with pytest.raises(ValueError, match="unknown options \\['bits'\\]"):
        adabits.quantize_model(HandMadeCNN(), [4], layer_options={"stem.0": {"bits": 8}})


def test_conversion_keeps_the_float_function() -> None:
    """At 32 bits without clamp or rescale the converted model computes what the float model did."""
    torch.manual_seed(0)
    float_model = HandMadeCNN().eval()
    for bn in (float_model.stem[1], float_model.block["bn"]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 16, 16)
    expected = float_model(x)
    config = QuantConfig(clamp=False, rescale=False)
    model = adabits.quantize_model(float_model, bits_list=[32, 4], config=config)
    adabits.set_bits(model, 32)
    torch.testing.assert_close(model(x), expected)


def test_a_single_layer_is_returned_quantized() -> None:
    layer = adabits.quantize_model(nn.Conv2d(3, 4, 3), bits_list=[4], first_last_policy=False)
    assert isinstance(layer, QConv2d)


def test_load_fp_state_dict_fills_every_per_bit_copy() -> None:
    torch.manual_seed(0)
    fp = adabits.create_model("resnet_cifar", depth=8, bits_list=[32], num_classes=10)
    for module in fp.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
        if isinstance(module, (QConv2d, QLinear)) and module.alpha is not None:
            module.alpha.data.fill_(3.0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 6, 4], num_classes=10)
    result = adabits.load_fp_state_dict(model, fp.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for index in range(3):
        assert torch.equal(model.bn1.bn[index].running_mean, fp.bn1.bn[0].running_mean)
    assert torch.equal(model.layers[0].conv1.alpha, torch.full((3,), 3.0))
    assert torch.equal(model.fc.weight, fp.fc.weight)


def test_load_fp_state_dict_from_a_plain_float_model_reports_keys() -> None:
    model = adabits.quantize_model(HandMadeCNN(), bits_list=[8, 4])
    state = HandMadeCNN().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.1.bias"]
    result = adabits.load_fp_state_dict(model, state)
    assert result.unexpected_keys == ["extra.weight"]
    assert result.missing_keys == ["head.1.bias"]
    assert torch.equal(model.stem[1].bn[1].running_var, state["stem.1.running_var"])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_convert(name: str) -> None:
    models = pytest.importorskip("torchvision.models")
    model = adabits.quantize_model(getattr(models, name)(num_classes=10), bits_list=[8, 6, 4])
    x = torch.randn(2, 3, 64, 64)
    for bits in (8, 6, 4):
        adabits.set_bits(model, bits)
        assert model(x).shape == (2, 10)
