"""A quantized layer as integer-kernel operands: BN folded in, int8 weights, int32 bias on the finest grid.

A quantized conv/linear layer at b bits computes w * x with w = m * step * s[c] (its signed integer
codes m, `QuantLayer.signed_weight_codes`, and per-channel scale s, `QuantLayer.weight_scale`) on
activation codes k with x = k * scale (`QuantLayer.input_scale`), then its BN. Folding the BN gives, per output channel c,

    y[c] = (sum m k) * x_scale * w_scale[c] + bias[c],

which an integer kernel (ONNX Runtime's QLinearConv) computes exactly except for the bias: it adds
the bias as an int32 number of grid steps x_scale * w_scale[c], so the bias it applies is off by
up to half a step. A quantized network is chaotic: one activation code rounded differently starts
a cascade through the following layers, so this error has to be made small, not merely bounded.
The grid is made finer from both sides, keeping every value exact:
- weights: each channel's codes are multiplied by an integer (and its scale divided by it);
- inputs: the layer's codes are multiplied by an integer (requantized at scale / factor), as far
  as uint8 holds them.
Both are bounded by ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI, which add pairs of
products in int16 with saturation: |x| * |w| <= PAIR_PRODUCT_LIMIT keeps every pair exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..quant.bitwidth import FULL_PRECISION
from ..quant.layers import QuantLayer

PAIR_PRODUCT_LIMIT = 16383  # two products of this size still fit int16 (32767)
INT8_MAX = 127
UINT8_MAX = 255


@dataclass
class FoldedLayer:
    """A conv/linear layer's weight and bias with BN folded in: w = codes * scale[c], or a float w."""

    codes: np.ndarray | None  # signed integer codes (int64); None for a full-precision weight
    scale: np.ndarray  # float64 per output channel (ones for a float weight)
    weight: np.ndarray | None  # the float weight (full precision only)
    bias: np.ndarray  # float64 per output channel

    def float_weight(self) -> np.ndarray:
        """The folded weight as float numbers (exact integer multiples of the scale for codes)."""
        if self.codes is None:
            assert self.weight is not None  # a FoldedLayer has codes or a float weight
            return self.weight
        return self.codes * self.scale.reshape(-1, *([1] * (self.codes.ndim - 1)))

    def fits_int8(self) -> bool:
        return self.codes is not None and self.codes.min() >= -INT8_MAX - 1 and self.codes.max() <= INT8_MAX


def check_integer_input(layer: QuantLayer, name: str, *, two_sided: bool = False) -> None:
    """Raise ExportError, naming the layer, when its input codes have no integer-kernel form: a scheme that
    floors or offsets the codes, double_side (zero point (2^b - 1) / 2) unless the exporter shifts the
    input by alpha (`two_sided`), or more than 8 bits."""
    if not layer.act_scheme.quantize_linear_exact:
        raise ExportError(f"layer {name}: act_quant_scheme {layer.act_quant_scheme!r} cannot be exported; "
                          "QuantizeLinear rounds to integer codes with an integer zero point, which is "
                          "the 'original' scheme only")
    if layer.double_side and not two_sided:
        raise ExportError(f"layer {name}: double_side activations need the zero point (2^b - 1) / 2, "
                          "which is not an integer; export supports single-sided PACT only")
    if layer.act_bits > 8:
        raise ExportError(f"layer {name}: {layer.act_bits}-bit activations do not fit uint8")


def running_statistics(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(running mean, running variance): what an exported BN computes with."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError("a BatchNorm2d without running statistics (track_running_stats=False) cannot be exported")
    return bn.running_mean, bn.running_var


def fold_layer(layer: QuantLayer, bn: nn.BatchNorm2d | None) -> FoldedLayer:
    """The layer at its current bit-width with `bn` (eval statistics) folded in, in float64."""
    out = layer.weight.shape[0]
    gain = np.ones(out)
    own_bias: torch.Tensor | None = getattr(layer, "bias", None)  # nn.Conv2d / nn.Linear's
    bias = own_bias.detach().double().numpy() if own_bias is not None else np.zeros(out)
    if bn is not None:
        mean, var = running_statistics(bn)
        gain = (bn.weight.detach().double() / torch.sqrt(var.double() + bn.eps)).numpy()
        bias = bn.bias.detach().double().numpy() + (bias - mean.double().numpy()) * gain
    if layer.weight_bits < FULL_PRECISION:
        codes, step = layer.signed_weight_codes()
        scale = layer.weight_scale().detach().double().cpu().numpy()  # SAT's (one) or the channel scales
        return FoldedLayer(codes.cpu().numpy(), step * scale * gain, None, bias)
    weight = layer.quantized_weight().detach().double().numpy()
    return FoldedLayer(None, np.ones(out), weight * gain.reshape(-1, *([1] * (weight.ndim - 1))), bias)


def _channel_tops(codes: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(codes.reshape(codes.shape[0], -1)).max(axis=1), 1)


def input_factor(codes: np.ndarray, levels: int, pair_limit: int | None = PAIR_PRODUCT_LIMIT) -> int:
    """The integer the layer's input codes (0..levels) are multiplied by: as large as uint8 allows,
    leaving the weights their whole int8 range within the pair-product limit."""
    top = int(_channel_tops(codes).max())
    widest = top * max(INT8_MAX // top, 1)
    room = UINT8_MAX // levels
    return max(1, room if pair_limit is None else min(room, pair_limit // (levels * widest)))


def weight_multipliers(folded: FoldedLayer, input_scale: float, input_max: int,
                       pair_limit: int | None = PAIR_PRODUCT_LIMIT) -> np.ndarray:
    """Per output channel, the integer its codes are multiplied by: among those that keep the codes
    in int8 and within the pair-product limit, the one whose bias grid lands closest to the bias."""
    if folded.codes is None:
        raise ValueError("weight_multipliers needs a layer with integer weight codes, not a float weight")
    top = _channel_tops(folded.codes)
    room = INT8_MAX // top
    limit = np.maximum(room if pair_limit is None else np.minimum(room, pair_limit // (input_max * top)), 1)
    x32 = np.float64(np.float32(input_scale))
    best, best_error = np.ones(len(top), dtype=np.int64), np.full(len(top), np.inf)
    for c in range(1, int(limit.max()) + 1):
        grid = x32 * (folded.scale / c).astype(np.float32).astype(np.float64)
        error = np.abs(np.round(folded.bias / grid) * grid - folded.bias)
        better = (c <= limit) & (error <= best_error)
        best, best_error = np.where(better, c, best), np.where(better, error, best_error)
    return best
