"""Data-driven clipping levels (adabits.quant.clipping)."""

import pytest
import torch

import adabits
from adabits.quant.clipping import init_clipping_levels, mse_optimal_alpha
from adabits.quant.functional import quantize_activation


def test_uniform_data_is_not_clipped() -> None:
    x = torch.rand(100_000) * 3
    assert mse_optimal_alpha(x, 8).item() == pytest.approx(3.0, rel=0.01)
    assert mse_optimal_alpha(x, 4).item() == pytest.approx(3.0, rel=0.05)


def test_heavy_tails_are_clipped_more_at_low_bits() -> None:
    torch.manual_seed(0)
    x = torch.randn(200_000).relu() * 2
    a2, a4, a8 = (mse_optimal_alpha(x, b).item() for b in (2, 4, 8))
    assert a2 < a4 < a8 <= x.max().item()
    error = lambda alpha: (quantize_activation(x, torch.tensor(alpha), 2) - x).pow(2).mean()  # noqa: E731
    assert error(a2) < error(x.max().item()) and error(a2) < error(8.0)


def test_double_sided_levels_look_at_both_signs() -> None:
    x = -torch.rand(50_000) * 5  # only negative values
    assert mse_optimal_alpha(x, 8, double_side=True).item() == pytest.approx(5.0, rel=0.03)


def test_init_sets_one_alpha_per_bit_width_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4, 2], num_classes=10, in_chans=1)
    adabits.set_bits(model, 4)
    model.train()
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    levels = init_clipping_levels(model, torch.randint(0, 256, (32, 1, 16, 16)).float())
    assert set(levels) == {8, 4, 2}
    alpha = model.layers[0].conv1.alpha
    assert not torch.equal(alpha, torch.full((3,), 8.0))
    assert alpha[2] < alpha[0]  # fewer levels: clip harder
    assert adabits.get_bits(model) == 4 and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_state.items())
    assert "conv1" not in levels[8]  # the weight-only first layer has no alpha


def test_a_shared_alpha_is_chosen_once() -> None:
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 2], switch_alpha=False, in_chans=1)
    levels = init_clipping_levels(model, torch.randint(0, 256, (16, 1, 16, 16)).float())
    assert levels[8] and not levels[2]
