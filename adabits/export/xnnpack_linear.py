"""A linear layer as XNNPACK's dynamically quantized int4 / int8 kernels in a `.pte`: the model's own codes.

XNNPACK multiplies int8 activations, quantized per token at run time, by int4 or int8 weight codes with one
scale per output channel (its qd8-f32-qc4w / qc8w fully-connected kernels): a 4-bit layer reads half an
int8 layer's weight bytes and an eighth of a float one's. ExecuTorch's partitioner finds these kernels in
torchao's decomposed pattern (choose_qparams / quantize / dequantize on the input, dequantize on the weight),
which `IntxUnpackedToInt8Tensor` with per-token activation quantization writes when a linear layer's weight
is one. The weight here is the layer's own codes (`nbits_linear.signed_codes`: the half code of `centered`
and `original` weights becomes the input row's sum times a per-output scale, added after the layer), so
only the per-token rounding of the input is new: like ONNX Runtime's `accuracy_level=4`, fast and not exact.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .int8_layer import FoldedLayer
from .nbits_linear import signed_codes


def storage_bits(weight_bits: int) -> int | None:
    """The code width XNNPACK's kernel reads `weight_bits`-bit codes at (4 or 8); None above 8 bits."""
    return 4 if weight_bits <= 4 else 8 if weight_bits <= 8 else None


def dynamic_weight(folded: FoldedLayer, weight_bits: int) -> tuple[Tensor, Tensor | None] | None:
    """The layer's weight as a torchao `IntxUnpackedToInt8Tensor` (codes, per-channel scale, int8 activations
    quantized per token) and the per-output row-sum scale of half codes (None when there are none); None when
    the codes fit no storage width exactly."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    bits = storage_bits(weight_bits)
    split = None if bits is None else signed_codes(folded, bits)
    if split is None:
        return None
    codes, scale, row_sum = split
    n, k = codes.shape
    weight: Any = IntxUnpackedToInt8Tensor(
        torch.from_numpy(codes.astype(np.int8)), torch.from_numpy(scale.astype(np.float32)).reshape(n, 1),
        torch.zeros(n, 1, dtype=torch.int8), getattr(torch, f"int{bits}"), (1, k), torch.float32,
        IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)
    return weight, None if row_sum is None else torch.from_numpy(row_sum.astype(np.float32))
