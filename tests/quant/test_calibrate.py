"""BN re-calibration for a bit-width outside bits_list (adabits.calibrate_bn)."""
from __future__ import annotations

import math

import pytest
import torch

import adabits
from adabits.quant.bn_calibration import add_bits, interpolate_alpha


def trained_like(bits_list=(8, 6, 4)) -> torch.nn.Module:
    """A small model whose per-bit BN statistics and alphas differ (as after training)."""
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=list(bits_list), num_classes=4, in_chans=1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, adabits.QConv2d) and layer.alpha is not None and layer.alpha.numel() > 1:
                layer.alpha.copy_(torch.tensor([2.0, 3.0, 6.0][: layer.alpha.numel()]))
        model.train()
        for bits in bits_list:
            adabits.set_bits(model, bits)
            model(torch.randint(0, 256, (16, 1, 12, 12)).float())
    return model.eval()


def batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (8, 1, 12, 12), generator=gen).float() for _ in range(n)]


def test_alpha_rule_log_linear_between_neighbours_and_nearest_outside() -> None:
    alphas = torch.tensor([2.0, 3.0, 6.0])
    pairs = [(8, 8), (6, 6), (4, 4)]
    assert float(interpolate_alpha(alphas, pairs, (5, 5))) == pytest.approx(math.sqrt(3.0 * 6.0))
    assert float(interpolate_alpha(alphas, pairs, (7, 7))) == pytest.approx(math.sqrt(2.0 * 3.0))
    assert float(interpolate_alpha(alphas, pairs, (3, 3))) == 6.0  # below the trained range: nearest
    assert float(interpolate_alpha(alphas, pairs, (16, 16))) == 2.0


def test_calibrated_bits_become_allowed_everywhere_and_stats_are_cumulative_averages() -> None:
    model = trained_like()
    model.train()  # the mode calibrate_bn must restore
    adabits.set_bits(model, 8)
    with pytest.raises(ValueError, match="allowed: 8, 6, 4"):
        adabits.set_bits(model, 5)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(3)
    adabits.calibrate_bn(model, 5, data, num_batches=3)
    assert model.training and adabits.get_bits(model) == 8
    assert adabits.get_bits_list(model) == [8, 6, 4, 5]
    assert all(m.bits_list[-1] == (5, 5) for m in adabits.quant.bitwidth.switchable_modules(model))
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in trained.items() if "alpha" not in k)  # trained BNs untouched
    # the first conv runs at the top bits for every bit-width, so bn1's new statistics are the
    # plain average of its per-batch channel means (momentum=None)
    bn = model.bn1.bn[3]
    with torch.no_grad():
        means = torch.stack([model.conv1(x).mean(dim=(0, 2, 3)) for x in data])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-4)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1
    assert torch.equal(bn.weight, model.bn1.bn[1].weight)  # gamma/beta of the nearest trained (6 bits)
    layer = model.layers[0].conv1
    assert float(layer.alpha[3].detach()) == pytest.approx(math.sqrt(3.0 * 6.0))
    adabits.set_bits(model, 5)
    model.eval()
    assert torch.isfinite(model(data[0])).all()


def test_checkpoint_of_a_calibrated_model_loads_after_add_bits() -> None:
    model = trained_like()
    adabits.calibrate_bn(model, 3, batches(2), num_batches=2)
    fresh = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 6, 4], num_classes=4, in_chans=1)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(model.state_dict())
    add_bits(fresh, 3)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = batches(1, seed=5)[0]
    for bits in (8, 6, 4, 3):
        with adabits.use_bits(model, bits), adabits.use_bits(fresh, bits):
            torch.testing.assert_close(fresh(x), model(x))


def test_calibration_errors() -> None:
    model = trained_like()
    with pytest.raises(ValueError, match="already one of the model's"):
        adabits.calibrate_bn(model, 6, batches(1))
    with pytest.raises(ValueError, match="num_batches"):
        adabits.calibrate_bn(model, 5, batches(1), num_batches=0)
    with pytest.raises(ValueError, match="from 1 to 32"):
        adabits.calibrate_bn(model, 40, batches(1))


def test_stats_sharing_shares_gamma_beta_with_the_new_bn() -> None:
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=4, in_chans=1,
                                 stats_sharing=True)
    adabits.calibrate_bn(model, 6, batches(1), num_batches=1)
    assert model.bn1.bn[2].weight is model.bn1.bn[0].weight


def test_recalibrate_bn_reestimates_only_the_given_bits_bns() -> None:
    """Direct adaptation: an 8-bit-only model spread into more bit-widths, then one re-estimated."""
    eight = trained_like(bits_list=(8,))
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=4, in_chans=1)
    adabits.load_fp_state_dict(model, eight.state_dict())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(2)
    adabits.recalibrate_bn(model, 4, data, num_batches=2)
    assert model.training and adabits.get_bits(model) == 8
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".bn.1." in k for k in changed)  # only the 4-bit BNs
    bn = model.bn1.bn[1]
    with torch.no_grad():
        means = torch.stack([model.conv1(x).mean(dim=(0, 2, 3)) for x in data])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"not one of the model's: \[8, 4\]"):
        adabits.recalibrate_bn(model, 5, data)


def test_recalibrate_bn_needs_switchable_layers() -> None:
    with pytest.raises(ValueError, match="bit-switchable layers"):
        adabits.recalibrate_bn(torch.nn.Conv2d(1, 1, 1), 4, batches(1))
