"""graph=qdq: any converted model at one bit-width as quantize/dequantize ops, through torch.export to
ONNX Runtime and ExecuTorch, computing what the model computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import adabits
from adabits.errors import ExportError
from adabits.export.qdq import QDQLayer, qdq_model
from adabits.quant.bitwidth import BitSwitchable

SHAPE = (1, 8, 8)
VIT = {"image_size": 8, "patch_size": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}


def _vit(scheme: str = "centered") -> nn.Module:
    torch.manual_seed(0)
    model = adabits.create_model("vit_tiny", bits_list=[8, 4], num_classes=5,
                                 config=adabits.QuantConfig(weight_quant_scheme=scheme), **VIT)
    model.eval()(_images())  # every clipping side chosen from its first input
    return model


def _images(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(seed)).float()


def _agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean())


@pytest.mark.parametrize("bits", [8, 4])
def test_the_qdq_model_computes_what_the_model_computes(bits):
    model = _vit()
    images = _images()
    with adabits.use_bits(model, bits), torch.no_grad():
        expected = model(images)
    qdq = qdq_model(model, bits, SHAPE)
    with torch.no_grad():
        got = qdq.module(images)
    assert not any(isinstance(m, (BitSwitchable, adabits.QuantLayer)) for m in qdq.module.modules())
    assert sum(isinstance(m, QDQLayer) for m in qdq.module.modules()) == 8  # patch, q, k, v, out, two MLP layers, head
    # a value on a rounding tie may land one code apart; nearly every prediction agrees
    assert _agreement(got, expected) >= 0.95
    assert (got - expected).abs().median() < 1e-3
    assert any(isinstance(m, adabits.QuantLayer) for m in model.modules())  # the model itself is untouched


def test_nine_bit_weight_codes_stay_exact_float_weights_and_are_named():
    model = _vit("centered")
    eight, four = qdq_model(model, 8, SHAPE), qdq_model(model, 4, SHAPE)
    assert "encoder.layers.0.linear1" in eight.float_weights  # centered 8-bit codes: odd up to 255
    assert four.float_weights == ["patch", "head"]  # the first and last layers keep 8 bits


@pytest.mark.parametrize("padding", [0, 1])
def test_a_two_sided_input_keeps_its_grid(padding):
    """-alpha + k * step has no integer zero point: the layer reads x + alpha (and folds -alpha W 1 into its
    bias, or subtracts alpha after dequantizing where zero padding must still read 0)."""
    torch.manual_seed(0)
    layer = adabits.QConv2d(3, 4, 3, padding=padding, bits_list=[4], double_side=True).eval()
    with torch.no_grad():
        layer.alpha.fill_(1.5)
    x = torch.randn(2, 3, 6, 6)
    model = nn.Sequential(layer)
    with torch.no_grad():
        torch.testing.assert_close(qdq_model(model, 4, (3, 6, 6)).module(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_layer_that_has_not_chosen_its_side_is_refused_by_name():
    model = adabits.create_model("vit_tiny", bits_list=[8, 4], **VIT)
    with pytest.raises(ExportError, match=r"layer encoder\.layers\.0\.self_attn\.q_proj: .* run the model on one batch"):
        qdq_model(model, 4, SHAPE)


def test_bit_widths_between_8_and_32_are_refused():
    with pytest.raises(ExportError, match="bit-widths <= 8, or 32"):
        qdq_model(_vit(), 16, SHAPE)
    with pytest.raises(ValueError, match="allowed: 8, 4"):  # 32 is the float graph, of a model that has it
        qdq_model(_vit(), 32, SHAPE)


def test_at_32_bits_the_qdq_model_is_the_float_model():
    torch.manual_seed(0)
    model = adabits.create_model("vit_tiny", bits_list=[32, 4], num_classes=5, **VIT).eval()
    images = _images()
    with adabits.use_bits(model, 32), torch.no_grad():
        expected = model(images)
    qdq = qdq_model(model, 32, SHAPE)
    with torch.no_grad():
        got = qdq.module(images)
    assert qdq.float_weights == [] and not any(isinstance(m, adabits.QuantLayer) for m in qdq.module.modules())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_onnx_runs_the_qdq_graph_with_integer_kernels_where_runtime_fuses_them(tmp_path):
    pytest.importorskip("onnxscript")
    from adabits.export.onnx_session import optimized_op_counts, run_onnx
    from adabits.export.qdq import export_qdq_onnx

    model = _vit()
    qdq = qdq_model(model, 4, SHAPE)
    path = export_qdq_onnx(qdq, tmp_path / "vit4.onnx")
    images = _images(7)  # any batch size
    with torch.no_grad():
        expected = qdq.module(images).numpy()
    np.testing.assert_allclose(run_onnx(path, images), expected, atol=2e-3, rtol=1e-3)
    ops = optimized_op_counts(path)
    assert ops["MatMulIntegerToFloat"] >= 1  # DequantizeLinear -> MatMul fused into an integer kernel
