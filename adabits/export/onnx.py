"""ONNX export at one bit-width: a QDQ graph that ONNX Runtime runs with its integer kernels.

The graph is built node by node with `onnx.helper` from a torch.fx trace of the model (quantized
layers and switchable BNs are leaves), because the QDQ form ONNX Runtime fuses is simple and
fully determined by the quantizers (SPEC sections 1-4), and no tracer could infer it:

- weights: int8 codes, one scale per output channel = the DoReFa step (x the SAT scale) x the
  folded BN factor gamma / sqrt(var + eps); BN's shift goes into an int32 bias;
- a quantized layer's input: QuantizeLinear to uint8 with scale alpha / (2^b - 1) and zero point 0
  (the PACT clip at 0 and the rounding are the quantizer's own), a Clip of the codes at 2^b - 1 when
  b < 8 (the clip at alpha), then DequantizeLinear;
- the first layer reads the raw image as uint8 with scale 1 when the model takes unnormalised
  input (`uint8_input=True`), which is exact;
- everything else (residual adds, pooling, the float first-layer path) stays float.

ONNX Runtime then fuses DQ -> Conv -> (Relu) -> Q into QLinearConv wherever a layer's output feeds
only quantized layers (the exporter gives those layers int8 weights, each channel's codes multiplied
so that the int32 bias lands as close to the exact one as int8 allows). Layers whose output feeds
a residual addition stay float convolutions on the dequantized input, with the same integer-valued
weights stored as float: requantizing the residual path would add rounding the model never had.
Full precision (bits 32) exports a plain float graph with BN folded.

Weight codes that do not fit int8 (`centered` and `original` weights are odd integers up to
2^b - 1, which need 9 bits at b = 8; `modified` codes k - 2^(b-1) fit int8 for every b <= 8) are
exact as float weights in a layer that stays float anyway (the first and last layers of a
`centered` model keep 8-bit weights at every bit-width, and must not make it unexportable); the
exporter does that with a warning naming the layers. In a layer ONNX Runtime would fuse into an
integer kernel they raise ExportError naming the layer, as does everything else the integer
format cannot express exactly: activation schemes other than `original` (they floor or offset the
codes), `double_side` (its zero point (2^b - 1) / 2 is not an integer), and activation bits above 8.
"""
from __future__ import annotations

import operator
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.common import as_float_input
from ..quant.bitwidth import FULL_PRECISION, get_bits, parse_bits, set_bits
from ..quant.functional import quantize_weight, sat_scale
from ..quant.layers import QuantLayerMixin, SwitchBatchNorm2d
from .packed import weight_codes

OPSET = 13
MAX_INTEGER_BITS = 8
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(ValueError):
    """The model (or one of its layers) uses something the exported format cannot express."""


class FloatWeightsWarning(UserWarning):
    """Some layers' weight codes need more than int8, so those (float) layers keep exact float weights."""


class _LeafTracer(fx.Tracer):
    """Keeps quantized layers and switchable BNs as single nodes (the exporter converts them whole)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (QuantLayerMixin, SwitchBatchNorm2d)) or super().is_leaf_module(module, qualified_name)


@dataclass
class _Value:
    """A tensor of the ONNX graph; `image` marks the raw uint8 image input."""

    name: str
    image: bool = False


@dataclass
class _Graph:
    """Collects nodes and initializers with unique names."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    count: int = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint.replace('.', '_')}_{self.count}"

    def const(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op), **attrs))
        return out

    def as_float(self, value: _Value) -> str:
        from onnx import TensorProto

        return self.node("Cast", [value.name], "as_float", to=TensorProto.FLOAT) if value.image else value.name


@dataclass
class _Folded:
    """A conv/linear layer's weight and bias with BN folded in: w = codes * scale[c] (or float w)."""

    codes: np.ndarray | None  # int8, or None for a float weight
    scale: np.ndarray  # float64 per output channel (ones for a float weight)
    weight: np.ndarray | None  # float weight (None for an integer one)
    bias: np.ndarray  # float64 per output channel


def _signed_codes(layer: QuantLayerMixin) -> tuple[np.ndarray, float] | None:
    """The weight as signed integers m with w = m * step (SPEC section 1); None when m does not fit int8."""
    bits, scheme = layer.weight_bits, layer.weight_quant_scheme
    k = weight_codes(layer.weight, bits, scheme).numpy()
    if scheme == "modified":
        m, step = k - 2 ** (bits - 1), 2.0 ** (1 - bits)
    elif scheme == "centered":
        m, step = 2 * k + 1 - 2**bits, 2.0**-bits
    else:
        m, step = 2 * k - (2**bits - 1), 1.0 / (2**bits - 1)
    if m.min() < -128 or m.max() > 127:
        return None
    return m.astype(np.int8), step


def _sat(layer: QuantLayerMixin) -> float:
    if not layer.rescale:
        return 1.0
    quantized = quantize_weight(layer.weight, layer.weight_bits, layer.weight_quant_scheme, layer.clamp)
    return float(sat_scale(quantized, layer.weight, layer.fan_out, layer.rescale_type))


def _channel_multipliers(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray, x_scale: float,
                         act_levels: int) -> np.ndarray:
    """Per output channel, the integer c that the int8 codes are multiplied by (and the scale divided by).

    ONNX Runtime adds the bias as int32 on the grid x_scale * w_scale, so the bias it applies is off
    by up to half a grid step, and every code the next layer rounds differently from PyTorch starts
    a cascade of differences. Multiplying low-bit codes by c makes that grid c times finer; among
    the c that keep the codes in int8, c is chosen to put the exact bias closest to the grid. On
    CPUs without VNNI the u8s8 kernels add pairs of products in int16, so c also keeps
    2 * act_levels * |code| <= 32767.
    """
    out = codes.shape[0]
    top = np.maximum(np.abs(codes.reshape(out, -1).astype(np.int32)).max(axis=1), 1)
    limit = np.maximum(np.minimum(127 // top, 32767 // (2 * act_levels * top)), 1)
    x32 = np.float64(np.float32(x_scale))
    best, best_error = np.ones(out, dtype=np.int64), np.full(out, np.inf)
    for c in range(1, int(limit.max()) + 1):
        grid = x32 * (scale / c).astype(np.float32).astype(np.float64)
        error = np.abs(np.round(bias / grid) * grid - bias)
        better = (c <= limit) & (error <= best_error)
        best, best_error = np.where(better, c, best), np.where(better, error, best_error)
    return best


def _fold(layer: QuantLayerMixin, bn: nn.BatchNorm2d | None, integer: bool) -> _Folded:
    out = layer.weight.shape[0]
    gain = np.ones(out)
    bias = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(out)
    if bn is not None:
        gain = (bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
        bias = bn.bias.detach().double().numpy() + (bias - bn.running_mean.double().numpy()) * gain
    signed = _signed_codes(layer) if integer and layer.weight_bits < FULL_PRECISION else None
    if signed is not None:
        codes, step = signed
        return _Folded(codes, step * _sat(layer) * gain, None, bias)
    weight = layer.quantized_weight().detach().double().numpy()
    weight = weight * gain.reshape(-1, *([1] * (weight.ndim - 1)))
    return _Folded(None, np.ones(out), weight, bias)


class _Converter:
    """Walks the fx graph once and emits ONNX nodes for each op at the model's current bit-width."""

    def __init__(self, model: nn.Module, graph: fx.Graph, integer: bool) -> None:
        self.model = model
        self.fx_graph = graph
        self.integer = integer
        self.modules = dict(model.named_modules())
        self.g = _Graph()
        self.values: dict[fx.Node, _Value] = {}
        self.folded_bn: set[fx.Node] = set()
        self.wide_weights: list[str] = []  # quantized layers whose codes need more than int8

    # ------------------------------------------------------------------ quantized layers
    def _layer_input(self, layer: QuantLayerMixin, name: str, x: _Value) -> tuple[str, float | None]:
        """The layer's input tensor as the layer sees it, and its quantization scale if integer."""
        g = self.g
        alpha = None if layer.alpha is None else layer.alpha.detach()
        if alpha is not None and alpha.numel() > 1:
            alpha = alpha[layer.bits_index]
        quantizes = alpha is not None and layer.act_bits < FULL_PRECISION
        if quantizes and self.integer:
            self._check_activation(layer, name)
            levels = 2**layer.act_bits - 1
            scale = np.float32(float(alpha.abs()) / levels)
            s, zp = g.const(scale, f"{name}.x_scale"), g.const(np.uint8(0), f"{name}.x_zero")
            q = g.node("QuantizeLinear", [g.as_float(x), s, zp], f"{name}.x_q")
            if levels < 255:
                q = g.node("Clip", [q, zp, g.const(np.uint8(levels), f"{name}.x_max")], f"{name}.x_clip")
            return g.node("DequantizeLinear", [q, s, zp], f"{name}.x_dq"), float(scale)
        if quantizes:
            raise ExportError(f"layer {name} quantizes its input at {layer.act_bits} bits; a float export "
                              "(bits 32) must not")
        if x.image and self.integer:
            one, zp = g.const(np.float32(1.0), "image_scale"), g.const(np.uint8(0), "image_zero")
            return g.node("DequantizeLinear", [x.name, one, zp], f"{name}.x_dq"), 1.0
        src = g.as_float(x)
        if alpha is not None and layer.pact_fp:
            level = float(alpha.abs())
            low = g.const(np.float32(-level if layer.double_side else 0.0), f"{name}.clip_lo")
            src = g.node("Clip", [src, low, g.const(np.float32(level), f"{name}.clip_hi")], f"{name}.clip")
        return src, None

    @staticmethod
    def _check_activation(layer: QuantLayerMixin, name: str) -> None:
        if layer.act_quant_scheme != "original":
            raise ExportError(f"layer {name}: act_quant_scheme {layer.act_quant_scheme!r} cannot be exported; "
                              "QuantizeLinear rounds to integer codes with an integer zero point, which is "
                              "the 'original' scheme only")
        if layer.double_side:
            raise ExportError(f"layer {name}: double_side activations need the zero point (2^b - 1) / 2, "
                              "which is not an integer; export supports single-sided PACT only")
        if layer.act_bits > MAX_INTEGER_BITS:
            raise ExportError(f"layer {name}: {layer.act_bits}-bit activations do not fit uint8")

    def _weight_and_bias(self, folded: _Folded, name: str, x_scale: float | None, fusable: bool,
                         act_levels: int) -> tuple[str, str]:
        """Integer weights (DQ of int8, int32 bias) where ONNX Runtime can fuse the layer into an
        integer kernel; elsewhere the same weights as float constants, so that nothing dequantizes
        weights at run time."""
        g = self.g
        if folded.codes is not None and not (fusable and x_scale is not None):
            weight = folded.codes.astype(np.float64) * folded.scale.reshape(-1, *([1] * (folded.codes.ndim - 1)))
            folded = _Folded(None, folded.scale, weight, folded.bias)
        if folded.codes is None:
            return (g.const(folded.weight.astype(np.float32), f"{name}.weight"),
                    g.const(folded.bias.astype(np.float32), f"{name}.bias"))
        multiplier = _channel_multipliers(folded.codes, folded.scale, folded.bias, x_scale, act_levels)
        shape = (-1, *([1] * (folded.codes.ndim - 1)))
        codes = (folded.codes.astype(np.int32) * multiplier.reshape(shape)).astype(np.int8)
        w_scale = (folded.scale / multiplier).astype(np.float32)
        out = len(w_scale)
        weight = g.node("DequantizeLinear", [g.const(codes, f"{name}.w_int8"), g.const(w_scale, f"{name}.w_scale"),
                                             g.const(np.zeros(out, np.int8), f"{name}.w_zero")], f"{name}.w", axis=0)
        b_scale = (np.float32(x_scale) * w_scale).astype(np.float32)
        b_int = np.round(folded.bias / b_scale.astype(np.float64)).astype(np.int32)
        bias = g.node("DequantizeLinear", [g.const(b_int, f"{name}.b_int32"), g.const(b_scale, f"{name}.b_scale"),
                                           g.const(np.zeros(out, np.int32), f"{name}.b_zero")], f"{name}.b", axis=0)
        return weight, bias

    def _quant_layer(self, node: fx.Node, layer: QuantLayerMixin) -> _Value:
        name = str(node.target)
        bn_node = self._foldable_bn(node)
        bn = None
        if bn_node is not None:
            switch = self.modules[str(bn_node.target)]
            bn = switch.bn[switch.bits_index if len(switch.bn) > 1 else 0]
            self.folded_bn.add(bn_node)
        x, x_scale = self._layer_input(layer, name, self.values[node.args[0]])
        act_levels = 2**layer.act_bits - 1 if layer.act_bits < FULL_PRECISION else 255
        fusable = self._feeds_only_quantizers(bn_node or node)
        folded = _fold(layer, bn, self.integer)
        if self.integer and folded.codes is None and layer.weight_bits < FULL_PRECISION:
            if fusable and x_scale is not None:
                raise ExportError(
                    f"layer {name}: {layer.weight_quant_scheme!r} weights at {layer.weight_bits} bits need 9-bit "
                    "integers, which the int8 kernels cannot hold; export a model trained with "
                    "weight_quant_scheme 'modified' (fits int8 up to 8 bits), or a bit-width of at most 7 bits")
            self.wide_weights.append(name)
        weight, bias = self._weight_and_bias(folded, name, x_scale, fusable, act_levels)
        if isinstance(layer, nn.Conv2d):
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ExportError(f"layer {name}: padding {layer.padding!r} / padding_mode {layer.padding_mode!r} "
                                  "cannot be exported; use integer zero padding")
            ph, pw = layer.padding
            out = self.g.node("Conv", [x, weight, bias], name, kernel_shape=list(layer.kernel_size),
                              strides=list(layer.stride), pads=[ph, pw, ph, pw], dilations=list(layer.dilation),
                              group=layer.groups)
        else:
            out = self.g.node("Gemm", [x, weight, bias], name, transB=1)
        value = _Value(out)
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
            elif not (isinstance(module, QuantLayerMixin) and module.alpha is not None
                      and module.act_bits < FULL_PRECISION):
                return False
        return bool(users)

    def _foldable_bn(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[str(users[0].target)], SwitchBatchNorm2d):
            return users[0]
        return None

    # ------------------------------------------------------------------ other ops
    def _module(self, node: fx.Node, module: nn.Module) -> _Value:
        g = self.g
        name = str(node.target)
        x = self.values[node.args[0]]
        if isinstance(module, QuantLayerMixin):
            return self._quant_layer(node, module)
        if isinstance(module, SwitchBatchNorm2d):
            bn = module.bn[module.bits_index if len(module.bn) > 1 else 0]
            params = [g.const(t.detach().float().numpy(), f"{name}.{k}") for k, t in
                      (("scale", bn.weight), ("bias", bn.bias), ("mean", bn.running_mean), ("var", bn.running_var))]
            return _Value(g.node("BatchNormalization", [g.as_float(x), *params], name, epsilon=bn.eps))
        if isinstance(module, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(module, nn.ReLU):
            return _Value(g.node("Relu", [g.as_float(x)], name))
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            return _Value(g.node("GlobalAveragePool", [g.as_float(x)], name))
        if isinstance(module, nn.MaxPool2d):
            k, s, p = (_pair(v) for v in (module.kernel_size, module.stride, module.padding))
            return _Value(g.node("MaxPool", [g.as_float(x)], name, kernel_shape=k, strides=s, pads=p + p))
        raise ExportError(f"module {name} ({type(module).__name__}) has no ONNX export rule")

    def _function(self, node: fx.Node) -> _Value:
        g = self.g
        target = node.target
        if target is as_float_input:  # its second argument is a weight, read only for its dtype
            x = self.values[node.args[0]]
            return x if self.integer else _Value(g.as_float(x))
        args = [self.values[a] if isinstance(a, fx.Node) else a for a in node.args]
        if target in (operator.add, torch.add):
            return _Value(g.node("Add", [g.as_float(args[0]), g.as_float(args[1])], "add"))
        if target in (F.relu, torch.relu):
            return _Value(g.node("Relu", [g.as_float(args[0])], "relu"))
        if target is torch.flatten or target == "flatten":
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ExportError(f"{node.name}: flatten from dimension {start} has no export rule (only 1)")
            return _Value(g.node("Flatten", [g.as_float(args[0])], "flatten", axis=1))
        if target is F.adaptive_avg_pool2d and args[1] in (1, (1, 1)):
            return _Value(g.node("GlobalAveragePool", [g.as_float(args[0])], "pool"))
        if target == "mean" and list(args[1]) == [2, 3]:
            pooled = g.node("GlobalAveragePool", [g.as_float(args[0])], "pool")
            return _Value(g.node("Flatten", [pooled], "flatten", axis=1))
        raise ExportError(f"operation {node.name} ({target}) has no ONNX export rule")

    # ------------------------------------------------------------------ the walk
    def convert(self, input_shape: tuple[int, ...], uint8_input: bool) -> Any:
        from onnx import TensorProto, helper

        image = uint8_input and self.integer
        for node in self.fx_graph.nodes:
            if node.op == "placeholder":
                self.values[node] = _Value(INPUT_NAME, image=image)
            elif node.op == "get_attr":
                continue  # only read by as_float_input, for its dtype
            elif node.op == "call_module":
                if node in self.folded_bn:
                    continue
                self.values[node] = self._module(node, self.modules[str(node.target)])
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self._function(node)
            elif node.op == "output":
                result = self.values[node.args[0]]
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
                *, uint8_input: bool = True) -> Path:
    """Write `model` at `bits` to `path` as ONNX: a QDQ integer graph for bits <= 8, plain float at 32.

    `input_shape` is (C, H, W); the batch dimension is dynamic. With `uint8_input` (models trained
    with `normalize: false`) the integer graph takes the raw uint8 image. The model's bit-width
    and mode are restored. Raises ExportError (a ValueError) for what cannot be expressed.
    """
    import onnx

    weight_bits, act_bits = parse_bits(bits)
    if not (max(weight_bits, act_bits) <= MAX_INTEGER_BITS or min(weight_bits, act_bits) >= FULL_PRECISION):
        raise ExportError(f"ONNX export takes bits <= {MAX_INTEGER_BITS} (int8 kernels) or 32 (float), got {bits}")
    previous, was_training = get_bits(model), model.training
    set_bits(model, bits)  # ValueError naming the allowed bit-widths when the model lacks `bits`
    model.eval()
    try:
        traced = _LeafTracer(autowrap_functions=(as_float_input,)).trace(model)
        converter = _Converter(model, traced, integer=weight_bits < FULL_PRECISION)
        proto = converter.convert(tuple(input_shape), uint8_input)
    finally:
        set_bits(model, previous)
        model.train(was_training)
    if converter.wide_weights:
        warnings.warn(FloatWeightsWarning(f"{len(converter.wide_weights)} layer(s) keep exact float weights because their codes need "
                      f"more than int8 ({', '.join(converter.wide_weights)}); ONNX Runtime runs them as float "
                      "layers, as exact as the model."), stacklevel=3)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


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
    """Logits of the exported model on `images` (uint8 for an integer graph with uint8 input)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = images.numpy() if isinstance(images, Tensor) else images
    expected = session.get_inputs()[0].type
    array = array.astype(np.uint8 if expected == "tensor(uint8)" else np.float32)
    return session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
