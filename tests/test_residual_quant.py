"""QuantAdd: residual adds on 8-bit grids (quantize_residual), so that the all-integer export equals the model."""
from __future__ import annotations

import pytest
import torch

import adabits
from adabits.export.integer_graph import integer_graph
from adabits.quant.convert import load_fp_state_dict
from adabits.quant.residual import QuantAdd, fake_quantize
from adabits.quant.grid import Grid

SHAPE = (1, 12, 12)


def test_disabled_is_a_plain_add_without_state() -> None:
    add = QuantAdd([8, 4], enabled=False, relu=True)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(add(a, b), torch.relu(a + b)) and add.state_dict() == {}


def test_enabled_learns_ranges_in_training_and_rounds_onto_them() -> None:
    add = QuantAdd([8, 4], enabled=True)
    a, b = torch.randn(64, 8), torch.rand(64, 8)
    assert not add.calibrated
    add.eval()
    assert torch.equal(add(a, b), a + b)  # no batch seen yet: nothing to round onto
    add.train()
    add(a, b)
    assert add.calibrated and torch.allclose(add.ranges[0, 0], torch.stack([a.min(), a.max()]))
    adabits.set_bits(add, 4)
    assert not add.calibrated  # every bit-width has its own ranges
    adabits.set_bits(add, 8)
    add.eval()
    out = add(a, b)
    grid = add.grids()[2]
    codes = out / grid.scale
    assert torch.allclose(codes, codes.round(), atol=1e-3) and (out - (a + b)).abs().max() <= grid.scale
    x = torch.randn(5, requires_grad=True)
    fake_quantize(x, Grid.covering(-3.0, 3.0)).sum().backward()
    assert torch.equal(x.grad, torch.ones(5))  # straight through


def test_a_float_checkpoint_loads_and_a_new_bit_width_copies_the_nearest_ranges() -> None:
    model = adabits.create_model("resnet_cifar", bits_list=[8, 4], depth=8, width=8, num_classes=5, in_chans=1,
                                 quantize_residual=True)
    float_model = adabits.create_model("resnet_cifar", bits_list=[32], depth=8, width=8, num_classes=5, in_chans=1)
    missing, unexpected = load_fp_state_dict(model, float_model.state_dict())
    assert not [k for k in missing if "add" in k] and not unexpected
    add = model.layers[0].add
    add.ranges[1] = torch.arange(6.0).reshape(3, 2)
    add.add_bits((5, 5))
    assert torch.equal(add.ranges[2], add.ranges[1])


def trained_like(quantize_residual: bool):
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", bits_list=[8, 4], depth=8, width=8, num_classes=5, in_chans=1,
                                 weight_quant_scheme="modified", quantize_residual=quantize_residual)
    images = torch.randint(0, 256, (64, *SHAPE)).float()
    model.train()
    with torch.no_grad():
        for bits in (8, 4):
            with adabits.use_bits(model, bits):
                for _ in range(2):
                    model(images)
    return model.eval(), images


@pytest.mark.parametrize("bits", [8, 4])
def test_the_integer_graph_of_a_quantize_residual_model_computes_the_model(bits) -> None:
    """Without quantize_residual the export's 8-bit residual grids cost this untrained net 33% relative
    error at 4 bits (test_integer_graph.py); with it, model and graph round the same tensors the same way."""
    model, images = trained_like(True)
    graph = integer_graph(model, bits, SHAPE, images)
    with adabits.use_bits(model, bits), torch.no_grad():
        expected = model(images)
        got = graph(images)
    assert float((got - expected).norm() / expected.norm()) < 0.01
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.98
