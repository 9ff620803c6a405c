"""ONNX export at one bit-width: a QDQ graph that ONNX Runtime runs with its integer kernels.

The graph is built node by node with `onnx.helper` from a torch.fx trace of the model (quantized
layers and switchable BNs are leaves), because the QDQ form ONNX Runtime fuses is simple and
fully determined by the quantizers, and no tracer could infer it. Every number comes from the
layers' own contract (`QuantLayer.input_scale`, `signed_weight_codes`, `weight_scale`,
`SwitchBatchNorm2d.active`), so the graph computes what the layer computes:

- a quantized layer's input: QuantizeLinear to uint8 with the layer's input scale and zero point 0
  (the PACT clip at 0 and the rounding are the quantizer's own), then a Clip of the codes at
  2^b - 1 when b < 8 (the clip at alpha);
- the first layer reads the raw image as uint8 codes with scale 1 when the model takes
  unnormalised input (`uint8_input=True`), which is exact;
- a layer whose output feeds only quantized layers (through ReLUs) becomes DequantizeLinear ->
  Conv -> QuantizeLinear, which ONNX Runtime fuses into QLinearConv: int8 weights with BN folded
  in and an int32 bias on the finest grid the kernels allow (int8_layer.py says how and why);
- every other quantized layer (those feeding a residual addition, the classifier) runs as a float
  Conv / Gemm on the same codes (Cast and scale: no DequantizeLinear, so that ONNX Runtime does
  not requantize its float weights) with the exact integer-valued weights and a float bias:
  requantizing the residual path would add rounding the model never had;
- everything else (residual adds, pooling) stays float.

The int32 bias is the one place the integer graph departs from the model (by a small fraction of
an activation step), and a quantized network amplifies such differences: expect top-1 agreement
with PyTorch in the high 99s, not 100%. `bias` chooses the trade-off:
- "int32_fine" (default): the finest bias grid, with the input codes of each integer layer
  requantized by an integer factor (one more QuantizeLinear per layer);
- "int32": the grid refined by the weights alone, faster, agrees less at low bits;
- "float": every layer runs the float way above (float kernels, float bias), which follows the
  model up to float rounding.

Weight codes that need 9 bits (`centered` and `original` at 8 bits: odd integers up to 255) have
no int8 form; a layer that would have been fused then runs the float way, with a
FloatWeightsWarning naming it. Everything else the integer format cannot express raises
ExportError naming the layer: activation schemes other than `original` (they floor or offset the
codes), `double_side` (its zero point (2^b - 1) / 2 is not an integer), and activation bits above
8. Full precision (bits 32) exports a plain float graph with BN folded.
"""
from __future__ import annotations

import operator
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ExportError
from ..models.common import as_float_input
from ..quant.bitwidth import FULL_PRECISION, format_bits, get_bits, parse_bits, set_bits
from ..quant.layers import QuantLayer, SwitchBatchNorm2d
from ..quant.residual import Int8Observer
from .int8_layer import UINT8_MAX, FoldedLayer, check_integer_input, fold_layer, int8_operands, running_statistics
from .onnx_graph import FLOAT, GraphBuilder, Value, save_checked
from .trace import trace_quantized

OPSET = 13
MAX_INTEGER_BITS = 8
BIAS_MODES = ("int32_fine", "int32", "float")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class FloatWeightsWarning(UserWarning):
    """Some layers' weight codes need more than int8, so those layers run as exact float kernels."""


@dataclass
class _Codes:
    """A quantized layer's input as uint8 codes 0..levels: the value is codes * scale."""

    name: str
    scale: float
    levels: int


class _Converter:
    """Walks the fx graph once and emits ONNX nodes for each op at the model's current bit-width."""

    def __init__(self, model: nn.Module, graph: fx.Graph, integer: bool, bias: str) -> None:
        self.fx_graph = graph
        self.integer = integer
        self.bias = bias
        self.modules = dict(model.named_modules())
        self.g = GraphBuilder()
        self.values: dict[fx.Node, Value] = {}
        self.folded_bn: set[fx.Node] = set()
        self.float_layers: list[str] = []  # would run as integer kernels, but their codes need 9 bits

    # ------------------------------------------------------------------ quantized layers
    def _input_codes(self, layer: QuantLayer, name: str, x: Value) -> _Codes | None:
        """The layer's input as integer codes (an integer export of a quantizing layer, or the raw image)."""
        g = self.g
        if not layer.quantizes_input:
            return _Codes(x.name, 1.0, UINT8_MAX) if x.image and self.integer else None
        if not self.integer:
            raise ExportError(f"layer {name} quantizes its input at {layer.act_bits} bits; a float export "
                              "(bits 32) must not")
        check_integer_input(layer, name)
        levels = layer.input_max_code()
        scale = np.float32(layer.input_scale())
        zero = g.const(np.uint8(0), f"{name}.x_zero")
        codes = g.node("QuantizeLinear", [g.as_float(x), g.const(scale, f"{name}.x_scale"), zero], f"{name}.x_q")
        if levels < UINT8_MAX:
            codes = g.node("Clip", [codes, zero, g.const(np.uint8(levels), f"{name}.x_max")], f"{name}.x_clip")
        return _Codes(codes, float(scale), levels)

    def _float_input(self, layer: QuantLayer, name: str, x: Value, codes: _Codes | None) -> str:
        """The layer's input as float: codes times their scale, or the float tensor (PACT-clipped for pact_fp)."""
        g = self.g
        if codes is not None:
            value = g.node("Cast", [codes.name], f"{name}.x_float", to=FLOAT)
            if codes.scale == 1.0:
                return value
            return g.node("Mul", [value, g.const(np.float32(codes.scale), f"{name}.x_scale")], f"{name}.x")
        src = g.as_float(x)
        level = layer.current_alpha()
        if level is not None and layer.clips_input:
            alpha = float(level.detach().abs())
            low = g.const(np.float32(-alpha if layer.double_side else 0.0), f"{name}.clip_lo")
            src = g.node("Clip", [src, low, g.const(np.float32(alpha), f"{name}.clip_hi")], f"{name}.clip")
        return src

    def _int8_operands(self, name: str, codes: _Codes, folded: FoldedLayer) -> tuple[str, str, str]:
        """DequantizeLinear of the input codes, the int8 weights and the int32 bias: the QDQ form
        ONNX Runtime fuses into an integer kernel."""
        g = self.g
        ops = int8_operands(folded, codes.scale, codes.levels, refine_input=self.bias == "int32_fine")
        zero = g.const(np.uint8(0), f"{name}.x_zero")
        x, scale = codes.name, g.const(np.asarray(codes.scale, np.float32), f"{name}.x_scale")
        if ops.input_factor > 1:  # codes k -> k * factor at scale / factor: exact, and a finer bias grid
            fine = g.const(ops.input_scale, f"{name}.x_fine_scale")
            x = g.node("QuantizeLinear", [g.node("DequantizeLinear", [x, scale, zero], f"{name}.x_dq"), fine, zero],
                       f"{name}.x_fine")
            scale = fine
        x = g.node("DequantizeLinear", [x, scale, zero], f"{name}.x_dq")
        out = len(ops.weight_scale)
        weight = g.node("DequantizeLinear", [g.const(ops.weight, f"{name}.w_int8"), g.const(ops.weight_scale, f"{name}.w_scale"),
                                             g.const(np.zeros(out, np.int8), f"{name}.w_zero")], f"{name}.w", axis=0)
        bias = g.node("DequantizeLinear", [g.const(ops.bias, f"{name}.b_int32"), g.const(ops.bias_scale, f"{name}.b_scale"),
                                           g.const(np.zeros(out, np.int32), f"{name}.b_zero")], f"{name}.b", axis=0)
        return x, weight, bias

    def _quant_layer(self, node: fx.Node, layer: QuantLayer) -> Value:
        g = self.g
        name = str(node.target)
        if isinstance(layer, nn.Conv2d) and (isinstance(layer.padding, str) or layer.padding_mode != "zeros"):
            raise ExportError(f"layer {name}: padding {layer.padding!r} / padding_mode {layer.padding_mode!r} "
                              "cannot be exported; use integer zero padding")
        bn_node = self._foldable_bn(node)
        bn = None
        if bn_node is not None:
            bn = self.modules[str(bn_node.target)].active
            self.folded_bn.add(bn_node)
        source = self._input(node)
        codes = self._input_codes(layer, name, source)
        folded = fold_layer(layer, bn)
        integer = (codes is not None and folded.codes is not None and self.bias != "float"
                   and self._feeds_only_quantizers(bn_node or node))
        if integer and not folded.fits_int8():
            self.float_layers.append(name)
        if integer and codes is not None and folded.fits_int8():
            x, weight, bias = self._int8_operands(name, codes, folded)
        else:
            x = self._float_input(layer, name, source, codes)
            weight = g.const(folded.float_weight().astype(np.float32), f"{name}.weight")
            bias = g.const(folded.bias.astype(np.float32), f"{name}.bias")
        if isinstance(layer, nn.Conv2d):
            ph, pw = _pair(layer.padding)  # type: ignore[arg-type]  # a str padding was refused above
            out = g.node("Conv", [x, weight, bias], name, kernel_shape=list(layer.kernel_size),
                         strides=list(layer.stride), pads=[ph, pw, ph, pw], dilations=list(layer.dilation),
                         group=layer.groups)
        else:
            out = g.node("Gemm", [x, weight, bias], name, transB=1)
        value = Value(out)
        if bn_node is not None:
            self.values[bn_node] = value
        return value

    def _feeds_only_quantizers(self, node: fx.Node) -> bool:
        """True when every use of `node` (through ReLUs) quantizes it at a layer's input: then ONNX
        Runtime fuses the producing Conv with that QuantizeLinear into QLinearConv."""
        users = list(node.users)
        for user in users:
            module = self.modules.get(str(user.target)) if user.op == "call_module" else None
            if isinstance(module, nn.ReLU) or (user.op == "call_function" and user.target in (F.relu, torch.relu)):
                if not self._feeds_only_quantizers(user):
                    return False
            elif not (isinstance(module, QuantLayer) and module.quantizes_input):
                return False
        return bool(users)

    def _foldable_bn(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[str(users[0].target)], SwitchBatchNorm2d):
            return users[0]
        return None

    # ------------------------------------------------------------------ other ops
    def _input(self, node: fx.Node) -> Value:
        """The graph value of a node's first argument (a tensor the walk has already converted)."""
        source = node.args[0]
        if not isinstance(source, fx.Node):
            raise ExportError(f"{node.name}: its input is the constant {source!r}, which has no export rule")
        return self.values[source]

    def _module(self, node: fx.Node, module: nn.Module) -> Value:
        g = self.g
        name = str(node.target)
        x = self._input(node)
        if isinstance(module, QuantLayer):
            return self._quant_layer(node, module)
        if isinstance(module, SwitchBatchNorm2d):
            bn = module.active
            mean, var = running_statistics(bn)
            params = [g.const(t.detach().float().numpy(), f"{name}.{k}") for k, t in
                      (("scale", bn.weight), ("bias", bn.bias), ("mean", mean), ("var", var))]
            return Value(g.node("BatchNormalization", [g.as_float(x), *params], name, epsilon=bn.eps))
        if isinstance(module, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(module, Int8Observer):
            raise ExportError(f"{name}: a quantize_residual model is exported by the all-integer graph "
                              "(graph=integer), not graph=mixed")
        if isinstance(module, nn.ReLU):
            return Value(g.node("Relu", [g.as_float(x)], name))
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            return Value(g.node("GlobalAveragePool", [g.as_float(x)], name))
        if isinstance(module, nn.MaxPool2d):
            k, s, p = (_pair(v) for v in (module.kernel_size, module.stride, module.padding))
            return Value(g.node("MaxPool", [g.as_float(x)], name, kernel_shape=k, strides=s, pads=p + p))
        raise ExportError(f"module {name} ({type(module).__name__}) has no ONNX export rule")

    def _function(self, node: fx.Node) -> Value:
        g = self.g
        target = node.target
        if target is as_float_input:  # its second argument is a weight, read only for its dtype
            x = self._input(node)
            return x if self.integer else Value(g.as_float(x))
        args: list[Any] = [self.values[a] if isinstance(a, fx.Node) else a for a in node.args]
        if target in (operator.add, torch.add):
            return Value(g.node("Add", [g.as_float(args[0]), g.as_float(args[1])], "add"))
        if target in (F.relu, torch.relu):
            return Value(g.node("Relu", [g.as_float(args[0])], "relu"))
        if target is torch.flatten or target == "flatten":
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ExportError(f"{node.name}: flatten from dimension {start} has no export rule (only 1)")
            return Value(g.node("Flatten", [g.as_float(args[0])], "flatten", axis=1))
        if target is F.adaptive_avg_pool2d and args[1] in (1, (1, 1)):
            return Value(g.node("GlobalAveragePool", [g.as_float(args[0])], "pool"))
        if target == "mean" and list(args[1]) == [2, 3]:
            pooled = g.node("GlobalAveragePool", [g.as_float(args[0])], "pool")
            return Value(g.node("Flatten", [pooled], "flatten", axis=1))
        raise ExportError(f"operation {node.name} ({target}) has no ONNX export rule")

    # ------------------------------------------------------------------ the walk
    def convert(self, input_shape: tuple[int, ...], uint8_input: bool) -> Any:
        from onnx import TensorProto, helper

        image = uint8_input and self.integer
        for node in self.fx_graph.nodes:
            if node.op == "placeholder":
                self.values[node] = Value(INPUT_NAME, image=image)
            elif node.op == "get_attr":
                continue  # only read by as_float_input, for its dtype
            elif node.op == "call_module":
                if node in self.folded_bn:
                    continue
                self.values[node] = self._module(node, self.modules[str(node.target)])
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self._function(node)
            elif node.op == "output":
                result = self._input(node)
                self.g.node("Identity", [self.g.as_float(result)], OUTPUT_NAME, output=OUTPUT_NAME)
        in_type = TensorProto.UINT8 if image else TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info(INPUT_NAME, in_type, ["batch", *input_shape])]
        outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "classes"])]
        graph = helper.make_graph(self.g.nodes, "adabits", inputs, outputs, self.g.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="adabits")


def _pair(value: int | tuple[int, ...]) -> list[int]:
    return list(value) if isinstance(value, tuple) else [value, value]


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, bits: object, input_shape: tuple[int, int, int],
                *, uint8_input: bool = True, bias: str = "int32_fine") -> Path:
    """Write `model` at `bits` to `path` as ONNX: a QDQ integer graph for bits <= 8, plain float at 32.

    `input_shape` is (C, H, W); the batch dimension is dynamic. With `uint8_input` (models trained
    with `normalize: false`) the integer graph takes the raw uint8 image. `bias` is one of
    BIAS_MODES (see the module docstring): "float" runs every layer as a float kernel on the integer
    codes with a float bias, the model's arithmetic up to float rounding. The model's bit-width
    and mode are restored. Raises ExportError (a ValueError) for what cannot be expressed.
    """

    if bias not in BIAS_MODES:
        raise ExportError(f"bias must be one of {', '.join(BIAS_MODES)}; got {bias!r}")
    pair = parse_bits(bits)
    weight_bits, act_bits = pair
    if not (max(weight_bits, act_bits) <= MAX_INTEGER_BITS or min(weight_bits, act_bits) >= FULL_PRECISION):
        raise ExportError(f"ONNX export takes bits <= {MAX_INTEGER_BITS} (int8 kernels) or 32 (float), got {bits}")
    previous, was_training = get_bits(model), model.training
    set_bits(model, format_bits(pair))  # BitWidthError naming the allowed bit-widths when the model lacks `bits`
    model.eval()
    try:
        traced = trace_quantized(model)
        converter = _Converter(model, traced, integer=weight_bits < FULL_PRECISION, bias=bias)
        proto = converter.convert(tuple(input_shape), uint8_input)
    finally:
        set_bits(model, previous)
        model.train(was_training)
    if converter.float_layers:
        warnings.warn(FloatWeightsWarning(
            f"{len(converter.float_layers)} layer(s) run as float kernels, exact, because their 8-bit weight codes "
            f"(odd integers up to 255) need 9 bits, more than int8 holds: {', '.join(converter.float_layers)}"),
            stacklevel=3)
    return save_checked(proto, path)


def integer_layer_count(path: str | Path) -> tuple[int, int]:
    """(layers written for integer kernels, all conv/linear layers) of an exported graph: a Conv or
    Gemm whose weight comes out of a DequantizeLinear is one ONNX Runtime fuses into QLinearConv."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    layers = [n for n in nodes if n.op_type in ("Conv", "Gemm")]
    return sum(n.input[1] in dequantized for n in layers), len(layers)


def optimized_op_counts(path: str | Path) -> Counter:
    """The op types ONNX Runtime (CPU) runs after its graph optimizations, counted (shows the fusions)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def run_onnx(path: str | Path, images: Tensor | np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits of the exported model on `images` (cast to the graph's input type: uint8 or float32)."""
    from .onnx_session import cpu_session, session_logits

    return session_logits(cpu_session(path, threads), images)
