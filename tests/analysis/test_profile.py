"""Profiling: known totals, effective bits of first/last layers, BN counted once, model left as found."""
from __future__ import annotations

import pytest
import torch

import adabits
from adabits.analysis.profile import profile_model, profile_table


def test_resnet20_cifar_totals_match_the_literature() -> None:
    model = adabits.create_model("resnet20", bits_list=[8, 4], num_classes=10, in_chans=3)
    eight, four = profile_model(model, (3, 32, 32))
    conv_linear_macs = sum(c.macs for c in eight.layers if c.kind != "bn")
    assert conv_linear_macs == pytest.approx(40.55e6, rel=0.01)  # ~41 M MACs (He et al.)
    assert eight.macs == pytest.approx(41e6, rel=0.02)  # plus one MAC per BN output element
    assert eight.params == pytest.approx(0.27e6, rel=0.01)
    assert eight.macs == four.macs and eight.params == four.params
    assert eight.bitops > four.bitops and eight.size_bytes > four.size_bytes


def test_every_layer_once_with_its_effective_bits() -> None:
    model = adabits.create_model("resnet20", bits_list=[6, 4], num_classes=10, in_chans=1)
    _, four = profile_model(model, (1, 28, 28))
    kinds = [c.kind for c in four.layers]
    assert kinds.count("conv") == 21 and kinds.count("linear") == 1 and kinds.count("bn") == 21
    by_name = {c.name: c for c in four.layers}
    assert (by_name["conv1"].weight_bits, by_name["conv1"].act_bits) == (6, 32)  # weight-only, bitw_min = max bits
    assert (by_name["fc"].weight_bits, by_name["fc"].act_bits) == (6, 4)  # classifier keeps the highest bits
    assert (by_name["layers.0.conv1"].weight_bits, by_name["layers.0.conv1"].act_bits) == (4, 4)
    assert by_name["layers.0.bn1.bn.1"].params == 32  # the active BN only: gamma and beta
    conv = by_name["layers.0.conv1"]
    assert conv.macs == 16 * 16 * 9 * 28 * 28 and conv.params == 16 * 16 * 9 + 1  # + its alpha
    assert four.bitops == sum(c.macs * c.weight_bits * c.act_bits for c in four.layers)
    # size: weights at their bits, everything else 32-bit
    weights_bits = sum(c.macs // (28 * 28) * c.weight_bits for c in four.layers if c.name == "layers.0.conv1")
    assert conv.size_bits == weights_bits + 32
    assert "FP32" not in profile_table([four]) and "4" in profile_table([four])


def test_profile_leaves_mode_and_bits_as_found() -> None:
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 6, 4], num_classes=10, in_chans=1)
    adabits.set_bits(model, 6)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, (1, 16, 16))
    assert model.training and adabits.get_bits(model) == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    model.eval()
    profile_model(model, (1, 16, 16), bits=[4])
    assert not model.training and adabits.get_bits(model) == 6


@pytest.mark.parametrize("name, size, macs", [("mobilenet_v2", 224, 300e6), ("resnet50", 224, 4.1e9)])
def test_imagenet_model_totals(name: str, size: int, macs: float) -> None:
    model = adabits.create_model(name, bits_list=[8, 4], num_classes=1000, in_chans=3)
    profile = profile_model(model, (3, size, size), bits=[8])[0]
    conv_linear_macs = sum(c.macs for c in profile.layers if c.kind != "bn")
    assert conv_linear_macs == pytest.approx(macs, rel=0.05)
