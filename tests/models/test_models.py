"""The model registry and the CIFAR ResNets."""

import pytest
import torch

import adabits
from adabits import QConv2d, QLinear


def test_registry_lists_and_refuses_unknown_names() -> None:
    names = adabits.list_models()
    for depth in (20, 32, 44, 56, 110):
        assert f"resnet{depth}" in names
    with pytest.raises(ValueError, match="known models: .*resnet20"):
        adabits.create_model("resnet21")
    with pytest.raises(ValueError, match="no option\\(s\\) \\['widht'\\]"):
        adabits.create_model("resnet20", widht=8)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_has_0_27_m_parameters() -> None:
    assert round(count(adabits.create_model("resnet20", bits_list=[32])) / 1e6, 2) == 0.27
    assert count(adabits.create_model("resnet56", bits_list=[32])) == pytest.approx(0.85e6, rel=0.01)


@pytest.mark.parametrize("depth", [7, 21, 2])
def test_bad_depths_are_refused(depth: int) -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        adabits.create_model("resnet_cifar", depth=depth)


def test_first_and_last_layer_policy() -> None:
    model = adabits.create_model("resnet20", bits_list=[5, 4, 3], num_classes=10)
    assert model.conv1.weight_only and model.conv1.bitw_min == 5 and model.conv1.bita_min == 8
    assert model.fc.bitw_min == 5
    adabits.set_bits(model, 3)
    assert model.fc.weight_bits == 5 and model.layers[0].conv1.weight_bits == 3


def test_quant_options_reach_the_layers() -> None:
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[4, 2], weight_quant_scheme="centered",
                                 switch_alpha=False, rescale_conv=True)
    conv = model.layers[0].conv1
    assert conv.weight_quant_scheme == "centered" and conv.alpha.numel() == 1 and conv.rescale


def test_grayscale_uint8_input_at_every_bit_width() -> None:
    model = adabits.create_model("resnet20", bits_list=[8, 6, 5, 4], num_classes=10, in_chans=1)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    for bits in (8, 6, 5, 4):
        adabits.set_bits(model, bits)
        logits = model(images)
        assert logits.shape == (3, 10) and torch.isfinite(logits).all()
        torch.testing.assert_close(logits, model(images.float()))


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = adabits.create_model("resnet56", bits_list=[32], classifier_std=0.01)
    conv = model.layers[10].conv1
    expected = (2 / (3 * 3 * conv.out_channels)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.all(model.fc.bias == 0)
    assert all(isinstance(m, (QConv2d, QLinear)) for m in [model.conv1, model.fc])


def test_cifar_resnet_stem_never_clips_the_images_even_under_pact_fp():
    """The stem reads raw 0..255 images: a PACT clip at alpha (8) there would flatten them."""
    model = adabits.create_model("resnet20", bits_list=[8, 4], num_classes=10, in_chans=1, pact_fp=True)
    assert model.conv1.alpha is None and not model.conv1.pact_fp
    assert model.layers[0].conv1.pact_fp
