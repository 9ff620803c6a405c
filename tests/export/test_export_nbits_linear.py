"""Linear layers exported as ONNX Runtime's MatMulNBits on the model's own codes: the packing holds every
code, the packed weight decodes to the layer's exact weight, and the ONNX graph computes what the
quantize/dequantize model computes (exactly at accuracy level 0, up to ONNX Runtime's int8 rounding of the
input at level 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adabits
from adabits.errors import ExportError
from adabits.export.int8_layer import FoldedLayer
from adabits.export.nbits_linear import pack_codes, pack_weight, storage_bits
from adabits.export.qdq import NBitsLinear, qdq_model

SHAPE = (1, 8, 8)
VIT = {"image_size": 8, "patch_size": 4, "dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64}


def _unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    per_byte = 8 // bits
    parts = [(packed >> (bits * i)) & (2**bits - 1) for i in range(per_byte)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1)[:, :k]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), n=st.integers(1, 5), k=st.integers(1, 80), block=st.sampled_from([16, 32, 64]),
       seed=st.integers(0, 2**16))
def test_packing_keeps_every_code_and_pads_with_the_zero_point(bits, n, k, block, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, (n, k)).astype(np.uint8)
    packed = pack_codes(codes, bits, block)
    blocks = -(-k // block)
    assert packed.shape == (n, blocks, block * bits // 8)
    full = _unpack(packed.reshape(n, -1), bits, blocks * block)
    np.testing.assert_array_equal(full[:, :k], codes)
    assert (full[:, k:] == 2 ** (bits - 1)).all()  # padding reads as weight 0


@settings(max_examples=80, deadline=None)
@given(weight_bits=st.integers(2, 8), level=st.sampled_from([0, 4]), half_codes=st.booleans(), n=st.integers(1, 4),
       k=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_a_packed_weight_decodes_to_the_layers_exact_weight(weight_bits, level, half_codes, n, k, seed):
    """(c - Z) * scale, plus the row-sum term where there is one, is w = m * s for every code the layer can hold:
    `modified` codes in [-2^(b-1), 2^(b-1) - 1], or the odd codes of `centered` / `original` in [-(2^b - 1), 2^b - 1]."""
    rng = np.random.default_rng(seed)
    top = 2 ** (weight_bits - 1)
    m = 2 * rng.integers(-top, top, (n, k)) + 1 if half_codes else rng.integers(-top, top, (n, k))
    folded = FoldedLayer(m.astype(np.int64), rng.uniform(1e-3, 1.0, n), None, np.zeros(n))
    packed = pack_weight(folded, weight_bits, level)
    bits = storage_bits(weight_bits, level)
    if bits is None:
        assert packed is None and level == 0 and weight_bits > 4
        return
    assert packed is not None and packed.bits == bits
    codes = _unpack(packed.packed.reshape(n, -1), bits, k).astype(np.float64)
    weight = (codes - 2 ** (bits - 1)) * packed.scales[:, :1]
    if packed.row_sum_scale is not None:
        weight = weight + packed.row_sum_scale[:, None]  # x @ w.T gains s[n] * sum(x): a weight of s[n] everywhere
    np.testing.assert_allclose(weight, folded.float_weight(), rtol=1e-6)


def test_an_accuracy_level_onnx_runtime_has_no_rule_for_is_refused_naming_the_allowed_ones():
    with pytest.raises(ExportError, match="accuracy_level must be one of 0, 4; got 2"):
        storage_bits(4, 2)


def _vit(scheme: str) -> nn.Module:
    torch.manual_seed(0)
    model = adabits.create_model("vit_tiny", bits_list=[8, 4, 3, 2], num_classes=5,
                                 config=adabits.QuantConfig(weight_quant_scheme=scheme), **VIT)
    model.eval()(_images())  # every clipping side chosen from its first input
    return model


def _images(n: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(1)).float()


@pytest.mark.parametrize("scheme", ["centered", "modified", "original"])
@pytest.mark.parametrize("bits", [4, 3, 2])
def test_onnx_runs_every_low_bit_linear_as_matmul_nbits_computing_what_the_model_computes(tmp_path, scheme, bits):
    pytest.importorskip("onnxscript")
    from adabits.export.onnx_session import optimized_op_counts, run_onnx
    from adabits.export.qdq import export_qdq_onnx

    model = _vit(scheme)
    low_bit_linears = sum(isinstance(m, nn.Linear) and isinstance(m, adabits.QuantLayer) for m in model.modules()) - 1
    qdq = qdq_model(model, bits, SHAPE, nbits_linear=True)
    assert sum(isinstance(m, NBitsLinear) for m in qdq.module.modules()) == low_bit_linears  # the head stays 8-bit
    images = _images()
    with torch.no_grad():
        expected = qdq.module(images).numpy()
    path = export_qdq_onnx(qdq, tmp_path / "vit.onnx")
    got = run_onnx(path, images)
    # a value on a rounding tie may land one activation code apart and move that image's logits; the rest match
    close = np.abs(got - expected).max(axis=1) < 1e-3
    assert close.mean() >= 0.9, f"{(~close).sum()} of {len(close)} images differ"
    assert optimized_op_counts(path)["MatMulNBits"] == low_bit_linears  # still there after ONNX Runtime's fusions


@pytest.mark.parametrize("scheme", ["centered", "modified"])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_at_accuracy_level_4_every_linear_runs_as_matmul_nbits_and_agrees_with_the_model(tmp_path, scheme, bits):
    """Level 4 computes in int8 on the input quantized per block at run time, so the logits move a little:
    the head (8 bits) and every lower-bit linear are MatMulNBits, and the top-1 class is kept."""
    pytest.importorskip("onnxscript")
    from adabits.export.onnx_session import optimized_op_counts, run_onnx
    from adabits.export.qdq import export_qdq_onnx

    model = _vit(scheme)
    linears = sum(isinstance(m, nn.Linear) and isinstance(m, adabits.QuantLayer) for m in model.modules())
    qdq = qdq_model(model, bits, SHAPE, nbits_linear=True, accuracy_level=4)
    assert sum(isinstance(m, NBitsLinear) for m in qdq.module.modules()) == linears
    images = _images(128)
    with torch.no_grad():
        expected = qdq.module(images).numpy()
    path = export_qdq_onnx(qdq, tmp_path / "vit.onnx")
    got = run_onnx(path, images)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95  # measured 0.975-0.995 over schemes and bits
    assert optimized_op_counts(path)["MatMulNBits"] == linears
