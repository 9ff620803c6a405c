"""The latency cost of the search: each quantized layer exported alone at each bit-width, with the input shape it
sees in the model, and timed in ONNX Runtime."""
from __future__ import annotations

import pytest
import torch
from _pretrained import TinyViT

import adabits
from adabits.analysis.layer_latency import layer_latency

pytest.importorskip("onnxscript")


@pytest.mark.parametrize("level", [0, 4])
def test_every_quantized_layer_gets_a_latency_at_every_bit_width_and_the_model_is_left_as_it_was(level):
    torch.manual_seed(0)
    model = adabits.quantize_model(TinyViT(), [8, 4, 2], calibration=[torch.randn(8, 1, 28, 28)])
    model.train()
    adabits.set_bits(model, 4)
    latency = layer_latency(model, (1, 28, 28), accuracy_level=level, rounds=3)
    layers = {name for name, m in model.named_modules() if isinstance(m, adabits.QuantLayer)}
    assert set(latency) == layers and "blocks.0.qkv" in layers
    assert all(set(row) == {8, 4, 2} and all(us > 0 for us in row.values()) for row in latency.values())
    assert model.training and adabits.get_bits(model) == 4
