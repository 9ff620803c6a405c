"""A linear layer at 2 to 8 weight bits as ONNX Runtime's `MatMulNBits`: the model's own codes, packed.

Where a linear layer's weights dominate memory traffic (batch 1, wide layers: transformer decoding), an
int8 kernel reads twice the bytes a 4-bit one does. `MatMulNBits` (com.microsoft) reads unsigned b-bit
codes c in blocks along K and computes `x @ ((c - Z) * s).T` with the default zero point Z = 2^(b-1); no
other CPU runtime path has sub-8-bit weights for a linear layer on these models.

A layer's weight is w = m * s[n] for signed integer codes m (`int8_layer.fold_layer`). Two forms hold it
exactly in b storage bits:

- m in [-Z, Z - 1] (`modified` weights): c = m + Z, scale s;
- m odd in [-(2Z - 1), 2Z - 1] (`centered` and `original` weights, whose zero point is a half code):
  m = 2 h + 1 with h = (m - 1) / 2 in [-Z, Z - 1], so c = h + Z at scale 2 s, and the half code left over
  adds s[n] * sum_k x[k] to output n: the input row times a column of ones, and one multiply-add per output.
  (A float zero point Z - 1/2 holds it too, but sends ONNX Runtime 1.32 to a path 50x slower.)

Which storage width, by ONNX Runtime's `accuracy_level` (ONNX Runtime 1.32, batch 1; measured on one
4096 x 4096 layer and in `benchmarks/deploy/decoder_nbits.py`): at level 0 (float32 compute on the unpacked
codes: what the model computes) only the 4-bit kernel is fast (the 2- and 8-bit ones ran 14x and 17-70x
slower), so 2- to 4-bit layers are stored at 4 bits and wider ones stay int8 quantize/dequantize layers; at
level 4 (int8 compute on the input quantized per block of K at run time: VNNI / AMX, not exact) 2-bit layers
are stored at 2 bits, 3- and 4-bit ones at 4, 5- to 8-bit ones at 8.

The layer is a torch custom op (`adabits::matmul_nbits`): eager and `torch.export` run its reference (the
float linear with the exact weight, which is what the model computes), and `torch.onnx.export` writes it
as MatMulNBits through `onnx_translations`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ExportError
from .int8_layer import FoldedLayer

BLOCK_SIZE = 32  # codes per block along K (one scale each): a power of two of at least 16
#: 0: ONNX Runtime computes in float32 on the unpacked codes, what the model computes; 4: int8 compute on
#: the input quantized per block at run time (faster; it moved a small random ViT's logits by up to 4.5)
ACCURACY_LEVEL = 0
ACCURACY_LEVELS = (0, 4)


@dataclass(frozen=True)
class PackedWeight:
    """A weight as MatMulNBits reads it: codes (N, blocks, block_size * bits / 8) packed low bits first,
    scales (N, blocks), and the per-output multiple of the input row's sum to add (None when there is none)."""

    packed: np.ndarray
    scales: np.ndarray
    row_sum_scale: np.ndarray | None
    bits: int
    block_size: int


def check_accuracy_level(accuracy_level: object) -> None:
    """ExportError, one line naming the allowed levels, for a level no export writes."""
    if isinstance(accuracy_level, bool) or accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(f"accuracy_level must be one of {', '.join(map(str, ACCURACY_LEVELS))}; got {accuracy_level!r}")


def storage_bits(weight_bits: int, accuracy_level: int = ACCURACY_LEVEL) -> int | None:
    """The MatMulNBits width that holds `weight_bits`-bit codes on a fast kernel at `accuracy_level`
    (module docstring), None where an int8 quantize/dequantize layer is the faster form."""
    check_accuracy_level(accuracy_level)
    if accuracy_level == 0:
        return 4 if weight_bits <= 4 else None
    return 2 if weight_bits <= 2 else 4 if weight_bits <= 4 else 8 if weight_bits <= 8 else None


def pack_codes(codes: np.ndarray, bits: int, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """Unsigned codes (N, K) in 0..2^bits - 1 as (N, ceil(K / block_size), block_size * bits / 8) uint8,
    each byte's lowest bits holding the first code; K is padded with the zero point (weight 0)."""
    n, k = codes.shape
    blocks = -(-k // block_size)
    padded = np.full((n, blocks * block_size), 2 ** (bits - 1), dtype=np.uint8)
    padded[:, :k] = codes
    per_byte = 8 // bits
    grouped = padded.reshape(n, blocks, block_size // per_byte, per_byte)
    packed = np.zeros(grouped.shape[:-1], dtype=np.uint8)
    for i in range(per_byte):
        packed |= (grouped[..., i] << (bits * i)).astype(np.uint8)
    return packed


def pack_weight(folded: FoldedLayer, weight_bits: int, accuracy_level: int = ACCURACY_LEVEL,
                block_size: int = BLOCK_SIZE) -> PackedWeight | None:
    """The layer's codes in MatMulNBits form, exactly; None when they fit neither form or `storage_bits`
    has no fast width for them."""
    bits = storage_bits(weight_bits, accuracy_level)
    if bits is None:
        return None
    split = signed_codes(folded, bits)
    if split is None:
        return None
    codes, scales, row_sum = split
    blocks = -(-codes.shape[1] // block_size)
    return PackedWeight(pack_codes((codes + 2 ** (bits - 1)).astype(np.uint8), bits, block_size),
                        np.repeat(scales.astype(np.float32)[:, None], blocks, axis=1),
                        None if row_sum is None else row_sum.astype(np.float32), bits, block_size)


def signed_codes(folded: FoldedLayer, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """The layer's weight w = m * s as signed `bits`-bit codes c in [-2^(bits-1), 2^(bits-1) - 1] with
    w = c * scale (+ row_sum_scale, the half code, per output): (c, scale, row_sum_scale or None), exactly;
    None when the codes fit neither form (module docstring)."""
    if folded.codes is None or folded.codes.ndim != 2:
        return None
    m, scale = folded.codes.astype(np.int64), folded.scale.astype(np.float64)
    zero = 2 ** (bits - 1)
    if m.min() >= -zero and m.max() <= zero - 1:
        return m, scale, None
    if (m % 2 == 1).all() and m.min() >= -(2 * zero - 1) and m.max() <= 2 * zero - 1:
        return (m - 1) // 2, 2 * scale, scale
    return None


@torch.library.custom_op("adabits::matmul_nbits", mutates_args=())
def matmul_nbits(x: Tensor, packed: Tensor, scales: Tensor, row_sum_scale: Tensor, bias: Tensor, weight: Tensor,
                 in_features: int, out_features: int, bits: int, block_size: int, accuracy_level: int) -> Tensor:
    """x @ weight.T + bias, which MatMulNBits computes from `packed` and `scales` (plus `row_sum_scale`
    times the row sum of x, when it is not empty). The reference computes from `weight`, the same values."""
    return F.linear(x, weight, bias)


@matmul_nbits.register_fake
def _(x: Tensor, packed: Tensor, scales: Tensor, row_sum_scale: Tensor, bias: Tensor, weight: Tensor,
      in_features: int, out_features: int, bits: int, block_size: int, accuracy_level: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _matmul_nbits_schema() -> Any:
    from onnx.defs import OpSchema

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"),
                param("zero_points", "T3", param_option=optional), param("g_idx", "T4", param_option=optional),
                param("bias", "T1", param_option=optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(float)"], ""), ("T4", ["tensor(int32)"], "")],
        attributes=[*(OpSchema.Attribute(name, OpSchema.AttrType.INT, "") for name in ("K", "N", "bits", "block_size")),
                    OpSchema.Attribute("accuracy_level", OpSchema.AttrType.INT, "", required=False)])


def onnx_translations() -> dict[Any, Any]:
    """The `custom_translation_table` entry for torch.onnx.export: `adabits::matmul_nbits` as MatMulNBits
    (and, for half-code weights, the input row's sum times `row_sum_scale` added)."""
    from onnx import numpy_helper
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    matmul = Op(Opset("com.microsoft", 1), "MatMulNBits", _matmul_nbits_schema())

    def translate(x: Any, packed: Any, scales: Any, row_sum_scale: Any, bias: Any, weight: Any, in_features: int,
                  out_features: int, bits: int, block_size: int, accuracy_level: int) -> Any:
        y = matmul(x, packed, scales, None, None, bias, K=in_features, N=out_features, bits=bits,
                   block_size=block_size, accuracy_level=accuracy_level)
        if row_sum_scale.shape is not None and row_sum_scale.shape[0] == 0:
            return y
        # the row sum as x @ ones(K, 1): OpenVINO 2026.4 sums a dequantized 3-D input wrongly in ReduceSum
        ones = op.Constant(value=numpy_helper.from_array(np.ones((in_features, 1), np.float32)))
        return op.Add(y, op.Mul(op.MatMul(x, ones), row_sum_scale))

    return {torch.ops.adabits.matmul_nbits.default: translate}
