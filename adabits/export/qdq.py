"""One bit-width of any converted model as a plain PyTorch module of quantize / dequantize ops.

The all-integer graph (integer_graph.py) rebuilds a CNN op by op from its torch.fx trace and knows
the ops of the registered CNNs. A model that trace cannot hold, or whose ops it has no rule for (a
transformer: attention, LayerNorm, GELU, token reshapes), is exported from this module instead,
traced by `torch.export`: every quantized layer becomes a `QDQLayer` and everything else stays the
model's own code, so the runtime computes what the model computes at that bit-width. A `QDQLayer`
holds its layer's arithmetic in the form integer runtimes fuse into integer kernels:

- its input quantized on the layer's own grid: clipped at the PACT level(s), then
  `quantize_per_tensor` / `dequantize_per_tensor` (int8 codes, zero point -128). A two-sided
  input's grid, -alpha + k * step, has no integer zero point; the layer reads x + alpha (codes k
  with zero point 0) instead, and its bias takes -alpha * W 1, so the kernel still multiplies the
  codes directly (a padded convolution, whose padding would then read -alpha, subtracts alpha after
  dequantizing);
- its weight as int8 codes with one scale per output channel (`dequantize_per_channel`), SAT's scale
  folded in; weight codes that need 9 bits (`centered` / `original` at 8 bits) stay an exact float
  weight, named in `QDQModel.float_weights`. Such a layer reads its input codes through a cast and a
  scale rather than a dequantize: behind a dequantize, ONNX Runtime's WeightBiasQuantization would
  round its float weight to int8 per tensor (it did: 1% of the logits).

Switchable norms become their copy of this bit-width (the modules replaced are the `qdq` column of
`op_rules.SOURCE_RULES`). Values on a rounding tie can land one code apart from PyTorch's quantizer
(x / step against x / alpha * levels in float32).

In ONNX Runtime this graph keeps the model's arithmetic up to float rounding: each layer multiplies
its dequantized codes by its dequantized weight with the exact float bias, and the BN stays a float op
after it (what the retired `graph=mixed bias=float` was kept for). At 32 bits (`bits=32`) nothing is
quantized: the graph is the float model, its PACT clips (`pact_fp`) included.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ExportError
from ..quant.assignment import layer_pairs
from ..quant.bitwidth import FULL_PRECISION, NamedAssignment, format_bits, set_bits
from ..quant.layers import QuantLayer
from ..quant.norms import SwitchableNorm
from .int8_layer import check_integer_input, fold_layer
from .nbits_linear import ACCURACY_LEVEL, PackedWeight, matmul_nbits, onnx_translations, pack_weight
from .onnx_graph import INPUT_NAME, OUTPUT_NAME, save_checked
from .op_rules import DEQUANTIZE, DEQUANTIZE_CHANNELS, QUANTIZE, module_rule
from .xnnpack_linear import dynamic_weight

CODE_ZERO = -128  # int8 storage of codes 0..255
#: the rules of the `qdq` column of `op_rules.SOURCE_RULES`: a `QDQLayer`, or a switchable norm's active copy
QDQ_RULES = ("layer", "active")


class QDQLayer(nn.Module):
    """A quantized conv / linear layer at one bit-width, written with quantize / dequantize ops."""

    weight_codes: Tensor
    weight_scale: Tensor
    weight_zero: Tensor
    float_weight: Tensor
    bias: Tensor

    def __init__(self, layer: QuantLayer, name: str, int8_weights: bool = True) -> None:
        super().__init__()
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            assert isinstance(layer, nn.Conv2d)
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ExportError(f"layer {name}: padding {layer.padding!r} / padding_mode {layer.padding_mode!r} "
                                  "cannot be exported; use integer zero padding")
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups
        folded = fold_layer(layer, None)
        self.int8_weight = int8_weights and folded.codes is not None and folded.fits_int8()
        # a float weight where int8 ones are written (ONNX): the input codes are read by a cast, not a
        # dequantize, which ONNX Runtime's WeightBiasQuantization would take as leave to round the weight to int8
        self.cast_codes = int8_weights and not self.int8_weight
        if self.int8_weight:
            assert folded.codes is not None
            self.register_buffer("weight_codes", torch.from_numpy(folded.codes.astype(np.int8)))
            self.register_buffer("weight_scale", torch.from_numpy(folded.scale.astype(np.float32)))
            self.register_buffer("weight_zero", torch.zeros(len(folded.scale), dtype=torch.int64))
        else:
            self.register_buffer("float_weight", torch.from_numpy(folded.float_weight().astype(np.float32)))
        bias = folded.bias
        self.quantizes_input = layer.quantizes_input
        self.clips_input = layer.clips_input
        self.low = self.high = self.step = self.shift_after = 0.0
        if self.clips_input:
            alpha = layer.current_alpha()
            assert alpha is not None  # clips_input says there is one
            level = float(alpha.detach().abs())
            self.low, self.high = (-level if layer.double_side else 0.0), level
        if self.quantizes_input:
            _check_input(layer, name)
            self.step = layer.input_scale()
            if layer.double_side:  # the layer reads x + alpha: codes k on 0..levels
                if self.conv and any(self.padding):  # the padding must still read 0, not -alpha
                    self.shift_after = self.high
                else:
                    bias = bias - self.high * folded.float_weight().reshape(len(bias), -1).sum(axis=1)
        self.register_buffer("bias", torch.from_numpy(np.asarray(bias, np.float32)))

    def _input(self, x: Tensor) -> Tensor:
        if not self.clips_input:
            return x
        x = x.clamp(self.low, self.high)
        if not self.quantizes_input:
            return x  # pact_fp: clipped, full precision
        codes = QUANTIZE(x - self.low if self.low else x, self.step, CODE_ZERO, -128, 127, torch.int8)
        if self.cast_codes:  # what DEQUANTIZE computes, in float32
            x = (codes.to(torch.float32) - CODE_ZERO) * self.step
        else:
            x = DEQUANTIZE(codes, self.step, CODE_ZERO, -128, 127, torch.int8)
        return x - self.shift_after if self.shift_after else x

    @property
    def weight(self) -> Tensor:
        """The weight the layer multiplies with (the models read its dtype, `as_float_input`)."""
        if not self.int8_weight:
            return self.float_weight
        return DEQUANTIZE_CHANNELS(self.weight_codes, self.weight_scale, self.weight_zero, 0, -128, 127, torch.int8)

    def forward(self, x: Tensor) -> Tensor:
        x, weight = self._input(x), self.weight
        if self.conv:
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, weight, self.bias)


class NBitsLinear(QDQLayer):
    """A linear layer whose ONNX form is MatMulNBits on its own packed codes (nbits_linear.py); its input is
    quantized as a QDQLayer's is."""

    def __init__(self, layer: QuantLayer, name: str, weight: PackedWeight, accuracy_level: int = ACCURACY_LEVEL) -> None:
        super().__init__(layer, name, int8_weights=False)
        self.register_buffer("packed", torch.from_numpy(weight.packed))
        self.register_buffer("scales", torch.from_numpy(weight.scales))
        row_sum = np.zeros(0, np.float32) if weight.row_sum_scale is None else weight.row_sum_scale
        self.register_buffer("row_sum_scale", torch.from_numpy(row_sum))
        self.in_features, self.out_features = self.float_weight.shape[1], self.float_weight.shape[0]
        self.bits, self.block_size, self.accuracy_level = weight.bits, weight.block_size, accuracy_level

    def forward(self, x: Tensor) -> Tensor:
        return matmul_nbits(self._input(x), self.packed, self.scales, self.row_sum_scale, self.bias, self.float_weight,
                            self.in_features, self.out_features, self.bits, self.block_size, self.accuracy_level)


class XnnpackLinear(QDQLayer):
    """A linear layer whose `.pte` form is XNNPACK's dynamically quantized int4 / int8 kernel on its own codes
    (xnnpack_linear.py); its input is quantized as a QDQLayer's is, then per token by XNNPACK."""

    def __init__(self, layer: QuantLayer, name: str, weight: Tensor, row_sum_scale: Tensor | None) -> None:
        super().__init__(layer, name, int8_weights=False)
        del self.float_weight  # the codes are the weight
        self.quantized_weight = nn.Parameter(weight, requires_grad=False)
        self.row_sum_scale = None if row_sum_scale is None else nn.Parameter(row_sum_scale, requires_grad=False)

    @property
    def weight(self) -> Tensor:
        return self.quantized_weight

    def forward(self, x: Tensor) -> Tensor:
        x = self._input(x)
        y = F.linear(x, self.quantized_weight, self.bias)
        return y if self.row_sum_scale is None else y + x.sum(-1, keepdim=True) * self.row_sum_scale


def _linear_xnnpack(layer: QuantLayer, name: str) -> XnnpackLinear | None:
    """`layer` as an XnnpackLinear when it is a linear layer whose codes XNNPACK's int4 / int8 kernels hold."""
    if not isinstance(layer, nn.Linear):
        return None
    found = dynamic_weight(fold_layer(layer, None), layer.weight_bits)
    return None if found is None else XnnpackLinear(layer, name, *found)


def _linear_nbits(layer: QuantLayer, name: str, accuracy_level: int) -> NBitsLinear | None:
    """`layer` as an NBitsLinear when it is a linear layer whose codes MatMulNBits holds exactly."""
    if not isinstance(layer, nn.Linear):
        return None
    weight = pack_weight(fold_layer(layer, None), layer.weight_bits, accuracy_level)
    return None if weight is None else NBitsLinear(layer, name, weight, accuracy_level)


def _check_input(layer: QuantLayer, name: str) -> None:
    """Raise ExportError naming the layer when its input codes are not QuantizeLinear's
    (`check_integer_input`, both sides allowed) or its clipping side is not chosen yet."""
    check_integer_input(layer, name, two_sided=True)
    if layer.clipping_side.startswith("auto"):
        raise ExportError(f"layer {name}: its clipping side is chosen from its first input (double_side: auto) "
                          "and it has seen none; run the model on one batch before exporting")


@dataclass
class QDQModel:
    """One bit-width of a model as a plain module (`module(images) -> logits`) and what it keeps in float.
    `uint8_input`: the model reads raw 0..255 pixels (trained with `normalize: false`), given as float."""

    module: nn.Module
    bits: object
    input_shape: tuple[int, ...]
    uint8_input: bool
    float_weights: list[str] = field(default_factory=list)


def qdq_model(model: nn.Module, bits: object, input_shape: tuple[int, ...], *, uint8_input: bool = True,
              int8_weights: bool = True, nbits_linear: bool = False, accuracy_level: int = ACCURACY_LEVEL,
              xnnpack_linear: bool = False) -> QDQModel:
    """A copy of `model` at `bits` (a bit-width of the model: weight and activation bits each at most 8, or
    32; or a NamedAssignment, each layer at its own) in eval mode, every quantized layer a `QDQLayer` and every switchable norm the copy of `bits`;
    `model` is not changed. At bits 32 this is the float model as plain modules.

    `int8_weights=False` keeps every weight as its exact float value: XNNPACK runs a linear on quantized
    inputs with int8 weights only when its output is quantized too, which a transformer's are not
    (they feed LayerNorm, GELU, a residual sum), so a `.pte` takes float weights and delegates the layer.
    `nbits_linear` writes each linear layer that ONNX Runtime's MatMulNBits runs fast at its `accuracy_level`
    (0: float32 compute, exact, 2 to 4 weight bits; 4: int8 compute on the input quantized per block at run
    time, 2 to 8 weight bits; `nbits_linear.storage_bits`) as an `NBitsLinear`, on the layer's own codes: a
    4-bit layer reads half an int8 kernel's weight bytes. `xnnpack_linear` (a `.pte`) writes each linear layer
    of at most 8 weight bits as an `XnnpackLinear`: XNNPACK's int4 / int8 kernels on its own codes, the input
    quantized per token at run time (what `accuracy_level=4` asks of a `.pte`)."""
    pairs = layer_pairs(model, bits)  # type: ignore[arg-type]
    for pair in pairs:
        if not all(b <= 8 or b >= FULL_PRECISION for b in pair):
            raise ExportError(f"a quantize/dequantize export takes bit-widths <= 8, or 32 (float); got {format_bits(pair)}")
    key = bits if isinstance(bits, NamedAssignment) else format_bits(pairs[0])
    twin = copy.deepcopy(model).eval()
    set_bits(twin, key)  # type: ignore[arg-type]
    float_weights = []
    for name, module in list(twin.named_modules()):
        rule = module_rule(module)
        if rule is None or rule.qdq is None:
            continue
        if rule.qdq == "layer":
            assert isinstance(module, QuantLayer)
            nbits = (_linear_nbits(module, name, accuracy_level) if nbits_linear else
                     _linear_xnnpack(module, name) if xnnpack_linear else None)
            layer = nbits or QDQLayer(module, name, int8_weights)
            if int8_weights and nbits is None and not layer.int8_weight and module.weight_bits < FULL_PRECISION:
                float_weights.append(name)
            replacement: nn.Module = layer
        else:  # "active": a switchable norm's copy of this bit-width
            assert rule.qdq == "active" and isinstance(module, SwitchableNorm)
            replacement = module.active
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, replacement)
    return QDQModel(twin, key, tuple(input_shape), uint8_input, float_weights)


def export_qdq_onnx(qdq: QDQModel, path: str | Path, dynamic: Sequence[str] = ()) -> Path:
    """Write `qdq` to `path` as ONNX through `torch.onnx.export` (torch.export, then onnxscript's
    translation and optimizer): input `input` float32 (batch, *input_shape), batch dynamic, and each
    dimension of `input_shape` that `dynamic` names (e.g. ("tokens", "") for a sequence); output `logits`."""
    example = torch.zeros(2, *qdq.input_shape)
    batch = {0: torch.export.Dim("batch", min=1, max=4096)}
    batch.update({i + 1: torch.export.Dim(name, min=1, max=4096) for i, name in enumerate(dynamic) if name})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(qdq.module, (example,), dynamo=True, verbose=False, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=(batch,),
                                    custom_translation_table=onnx_translations())
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return save_checked(program.model_proto, path)
