"""ONNX export of an IntegerGraph: its fx graph translated node by node into the QDQ form ONNX Runtime fuses.

`integer_graph.py` has already decided every number (grids, int8 weights, biases on the
input_scale x weight_scale grid); this module only writes them in ONNX's vocabulary, so that ONNX
Runtime (CPU) runs the graph with integer kernels and computes what `IntegerGraph.__call__` does:

- activations are uint8 (ONNX Runtime's fast x86 kernels are u8 activations x s8 weights): a
  tensor on grid g is stored as `u = code + g.uint8_offset`. Below 256 codes (PACT's 0..2^b - 1) a
  Clip of the uint8 codes at `g.high - g.low` follows the QuantizeLinear: the int8 form of the fx
  graph clips by saturating at 127, uint8 saturates at 255 only. ONNX Runtime keeps the QLinearConv
  fusion with that Clip on its output;
- with `uint8_input` the graph reads the raw uint8 image, which already is the codes of the first
  quantize (grid 1.0, 0..255): that quantize writes no node;
- a conv/linear on int8 weights becomes DequantizeLinear (input, per-channel int8 weight, int32
  bias) -> Conv / Gemm -> QuantizeLinear, which ONNX Runtime fuses into QLinearConv; it wants the
  bias as int32 steps of x_scale x w_scale[c], the grid `integer_graph` rounded the bias to;
- DequantizeLinear -> Add -> QuantizeLinear fuses into QLinearAdd; a Relu before a QuantizeLinear
  of zero point 0 is removed by ONNX Runtime (the clip at 0 is the quantization's own);
- a float layer (the classifier) reads its input codes through Cast (and Sub, Mul) rather than a
  DequantizeLinear: ONNX Runtime's WeightBiasQuantization rewrites DequantizeLinear -> float
  Conv / Gemm -> QuantizeLinear into an integer kernel with the float weight rounded to int8 per
  tensor, a rounding the IntegerGraph does not have (ONNX Runtime 1.32 leaves a layer whose output
  stays float alone, as the classifier's does; the Cast form holds whatever follows);
- scales and zero points are 0-d initializers: ONNX Runtime fuses QLinearAdd only from those.

Only the ops of `op_rules.INTEGER_GRAPH_RULES` are translated; anything else raises ExportError naming the node.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..atomic import atomic_write
from ..errors import ExportError
from ..quant.grid import INT8_MAX, INT8_MIN, UINT8_MAX, Grid
from .integer_graph import IMAGE_GRID, IntegerGraph
from .onnx_graph import FLOAT, INPUT_NAME, OPSET, OUTPUT_NAME, GraphBuilder, Value, save_checked
from .onnx_session import optimized_op_counts
from .op_rules import CONV, DEQUANTIZE, DEQUANTIZE_CHANNELS, INTEGER_GRAPH_RULES, LINEAR, QUANTIZE
from .qdq import QDQModel, export_qdq_onnx

INT32_MAX = 2**31 - 1


def _pair(value: Any, node: fx.Node) -> list[int]:
    """An fx argument that is an int or a sequence of one or two ints, as two ints (ONNX's per-axis form)."""
    values = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else None
    if values is None or not 1 <= len(values) <= 2 or not all(isinstance(v, int) for v in values):
        raise ExportError(f"{node.name}: expected an int or two ints, got {value!r}")
    return values * (2 // len(values))


class _Translator:
    """Walks the IntegerGraph's fx graph once, writing one or a few ONNX nodes per fx node."""

    def __init__(self, graph: IntegerGraph) -> None:
        self.module = graph.module
        self.uint8_input = graph.uint8_input
        self.input_shape = graph.input_shape
        self.g = GraphBuilder()
        self.values: dict[fx.Node, Value] = {}
        writers: dict[str, Callable[[fx.Node], Value]] = {
            "quantize": self.quantize, "dequantize": self.dequantize, "dequantize_channels": self.dequantize_channels,
            "conv": self.conv, "linear": self.linear, "add": self.add, "relu": self.relu, "mean": self.mean,
            "flatten": self.flatten, "max_pool": self.max_pool,
        }
        #: the table's ops (`op_rules.INTEGER_GRAPH_RULES`), each with the method that writes it
        self.rules = {target: writers[name] for target, name in INTEGER_GRAPH_RULES.items()}

    # ------------------------------------------------------------------ reading the fx graph
    def constant(self, node: Any) -> np.ndarray:
        """The tensor a get_attr node reads (a weight, scale or bias buffer of the IntegerGraph)."""
        if not (isinstance(node, fx.Node) and node.op == "get_attr"):
            raise ExportError(f"{node}: expected a constant (get_attr) here")
        return getattr(self.module, str(node.target)).detach().cpu().numpy()

    def value(self, node: Any, user: fx.Node) -> Value:
        if not isinstance(node, fx.Node) or node not in self.values:
            raise ExportError(f"{user.name}: its input {node!r} is not a tensor the export has written")
        return self.values[node]

    def float_input(self, node: Any, user: fx.Node) -> str:
        return self.g.as_float(self.value(node, user))

    @staticmethod
    def grid(node: fx.Node) -> Grid:
        grid = node.meta.get("grid")
        if not isinstance(grid, Grid):
            raise ExportError(f"{node.name}: a quantize/dequantize node without its grid (node.meta['grid'])")
        return grid

    @staticmethod
    def is_float_layer(node: fx.Node) -> bool:
        """A conv/linear on a float weight constant: it runs as a float kernel."""
        return (node.op == "call_function" and node.target in (CONV, LINEAR) and isinstance(node.args[1], fx.Node)
                and node.args[1].op == "get_attr")

    def scalar(self, value: np.generic, hint: str) -> str:
        """A 0-d initializer. (GraphBuilder.const stores a scalar with shape (1,), and ONNX Runtime fuses
        DequantizeLinear -> Add -> QuantizeLinear into QLinearAdd only when scales and zero points are 0-d.)"""
        from onnx import numpy_helper

        name = self.g.fresh(hint)
        self.g.initializers.append(numpy_helper.from_array(np.array(value), name))
        return name

    def zero_point(self, grid: Grid, hint: str) -> str:
        return self.scalar(np.uint8(grid.uint8_offset), f"{hint}.zero")

    # ------------------------------------------------------------------ quantize / dequantize
    def quantize(self, node: fx.Node) -> Value:
        grid, g = self.grid(node), self.g
        source = node.args[0]
        if isinstance(source, fx.Node) and source.op == "placeholder" and self.uint8_input:
            if grid != IMAGE_GRID:
                raise ExportError(f"{node.name}: the uint8 image input is quantized on {grid}, not on its own "
                                  f"codes {IMAGE_GRID}")
            return Value(INPUT_NAME)  # the raw image is these codes
        x = self.float_input(source, node)
        codes = g.node("QuantizeLinear", [x, self.scalar(np.float32(grid.scale), f"{node.name}.scale"),
                                          self.zero_point(grid, node.name)], node.name)
        if grid.high - grid.low < UINT8_MAX:
            top = self.scalar(np.uint8(grid.high - grid.low), f"{node.name}.max")
            codes = g.node("Clip", [codes, self.scalar(np.uint8(0), f"{node.name}.min"), top], f"{node.name}.clip")
        return Value(codes)

    def dequantize(self, node: fx.Node) -> Value:
        grid, g = self.grid(node), self.g
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.target is QUANTIZE and source.meta.get("grid") == grid):
            raise ExportError(f"{node.name}: dequantizes {source!r}, not a quantize node on its grid {grid}")
        codes = self.value(source, node).name
        if node.users and all(self.is_float_layer(user) for user in node.users):
            # a float layer's input: Cast and scale, so that ONNX Runtime leaves the layer's weight float
            x = g.node("Cast", [codes], f"{node.name}.float", to=FLOAT)
            if grid.uint8_offset:
                offset = self.scalar(np.float32(grid.uint8_offset), f"{node.name}.offset")
                x = g.node("Sub", [x, offset], f"{node.name}.code")
            if grid.scale != 1.0:
                x = g.node("Mul", [x, self.scalar(np.float32(grid.scale), f"{node.name}.scale")], node.name)
            return Value(x)
        return Value(g.node("DequantizeLinear", [codes, self.scalar(np.float32(grid.scale), f"{node.name}.scale"),
                                                 self.zero_point(grid, node.name)], node.name))

    def dequantize_channels(self, node: fx.Node) -> Value:
        weight, scale, zero = (self.constant(a) for a in node.args[:3])
        axis, low, high, dtype = node.args[3:7]
        if (axis, low, high, dtype, weight.dtype) != (0, INT8_MIN, INT8_MAX, torch.int8, np.int8) or zero.any():
            raise ExportError(f"{node.name}: only symmetric int8 weights per output channel (axis 0) are exported")
        g = self.g
        return Value(g.node("DequantizeLinear", [g.const(weight, f"{node.name}.int8"),
                                                 g.const(scale.astype(np.float32), f"{node.name}.scale"),
                                                 g.const(np.zeros(len(scale), np.int8), f"{node.name}.zero")],
                            node.name, axis=0))

    # ------------------------------------------------------------------ layers
    def layer_operands(self, node: fx.Node) -> list[str]:
        """[input, weight, bias] of a conv/linear. An int8 layer on dequantized codes gets its bias as int32
        steps of x_scale x w_scale[c], the form ONNX Runtime fuses; a float layer a float bias."""
        g = self.g
        x_node, w_node, b_node = node.args[:3]
        operands = [self.float_input(x_node, node)]
        int8_weight = isinstance(w_node, fx.Node) and w_node.target is DEQUANTIZE_CHANNELS
        if int8_weight:
            operands.append(self.value(w_node, node).name)
        else:
            operands.append(g.const(self.constant(w_node).astype(np.float32), f"{node.name}.weight"))
        if b_node is None:
            return operands
        bias = self.constant(b_node).astype(np.float32)
        if not (int8_weight and isinstance(x_node, fx.Node) and x_node.target is DEQUANTIZE):
            return [*operands, g.const(bias, f"{node.name}.bias")]
        w_scale = self.constant(w_node.args[1]).astype(np.float32)  # type: ignore[union-attr]  # int8_weight
        bias_scale = (np.float32(self.grid(x_node).scale) * w_scale).astype(np.float32)
        steps = np.round(bias / bias_scale.astype(np.float64))
        if np.abs(steps).max(initial=0) > INT32_MAX:
            raise ExportError(f"{node.name}: its bias needs more than int32 steps of input_scale x weight_scale")
        out = len(w_scale)
        return [*operands, g.node("DequantizeLinear", [g.const(steps.astype(np.int32), f"{node.name}.bias_int32"),
                                                       g.const(bias_scale, f"{node.name}.bias_scale"),
                                                       g.const(np.zeros(out, np.int32), f"{node.name}.bias_zero")],
                                  f"{node.name}.bias", axis=0)]

    def conv(self, node: fx.Node) -> Value:
        stride, padding, dilation, groups = node.args[3:7]
        if not isinstance(groups, int):
            raise ExportError(f"{node.name}: expected an int number of groups, got {groups!r}")
        w_node = node.args[1]
        stored = w_node.args[0] if isinstance(w_node, fx.Node) and w_node.target is DEQUANTIZE_CHANNELS else w_node
        pad = _pair(padding, node)
        return Value(self.g.node("Conv", self.layer_operands(node), node.name,
                                 kernel_shape=list(self.constant(stored).shape[2:]), strides=_pair(stride, node),
                                 pads=pad + pad, dilations=_pair(dilation, node), group=groups))

    def linear(self, node: fx.Node) -> Value:
        return Value(self.g.node("Gemm", self.layer_operands(node), node.name, transB=1))

    # ------------------------------------------------------------------ other ops
    def add(self, node: fx.Node) -> Value:
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
            raise ExportError(f"{node.name}: only a plain a + b is exported")
        a, b = (self.float_input(arg, node) for arg in node.args)
        return Value(self.g.node("Add", [a, b], node.name))

    def relu(self, node: fx.Node) -> Value:
        return Value(self.g.node("Relu", [self.float_input(node.args[0], node)], node.name))

    def mean(self, node: fx.Node) -> Value:
        dims = node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if not (isinstance(dims, (list, tuple)) and list(dims) == [2, 3] and keepdim):
            raise ExportError(f"{node.name}: only the mean over dims [2, 3] with keepdim (global average pool) "
                              "is exported")
        return Value(self.g.node("GlobalAveragePool", [self.float_input(node.args[0], node)], node.name))

    def flatten(self, node: fx.Node) -> Value:
        if node.args[1:] not in ((1,), (1, -1)) or node.kwargs:
            raise ExportError(f"{node.name}: only flatten(x, 1) is exported")
        return Value(self.g.node("Flatten", [self.float_input(node.args[0], node)], node.name, axis=1))

    def max_pool(self, node: fx.Node) -> Value:
        """max_pool2d(x, kernel, stride=kernel, padding=0): no dilation, no ceil_mode."""
        if node.kwargs or not 2 <= len(node.args) <= 4:
            raise ExportError(f"{node.name}: max_pool2d with dilation or ceil_mode is not exported")
        x, kernel, *rest = node.args
        stride, padding = rest[0] if rest else None, rest[1] if len(rest) > 1 else 0
        kernel_shape = _pair(kernel, node)
        pad = _pair(padding, node)
        return Value(self.g.node("MaxPool", [self.float_input(x, node)], node.name, kernel_shape=kernel_shape,
                                 strides=_pair(stride, node) if stride else kernel_shape, pads=pad + pad))

    # ------------------------------------------------------------------ the walk
    def translate(self) -> Any:
        from onnx import TensorProto, helper

        for node in self.module.graph.nodes:
            if node.op == "placeholder":
                if self.values:
                    raise ExportError(f"{node.name}: an integer graph has one input (the images)")
                self.values[node] = Value(INPUT_NAME, image=self.uint8_input)
            elif node.op == "get_attr":
                continue  # read by the node that uses it
            elif node.op == "call_function" and node.target in self.rules:
                self.values[node] = self.rules[node.target](node)
            elif node.op == "output":
                result = node.args[0]
                if isinstance(result, fx.Node) and result.target is QUANTIZE:
                    raise ExportError(f"{node.name}: the graph returns the codes of {result.name}; logits are float")
                self.g.node("Identity", [self.float_input(result, node)], OUTPUT_NAME, output=OUTPUT_NAME)
            else:
                raise ExportError(f"node {node.name} ({node.op} {node.target}) has no ONNX integer export rule")
        in_type = TensorProto.UINT8 if self.uint8_input else TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info(INPUT_NAME, in_type, ["batch", *self.input_shape])]
        outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "classes"])]
        graph = helper.make_graph(self.g.nodes, "adabits_integer", inputs, outputs, self.g.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="adabits")


def export_integer_onnx(graph: IntegerGraph, path: str | Path) -> Path:
    """Write `graph` to `path` as an ONNX (opset 13) QDQ graph that ONNX Runtime runs with integer kernels.

    Input `input`: uint8 images (batch, C, H, W) when `graph.uint8_input`, else float32; output
    `logits` (batch, classes), float32; the batch dimension is dynamic. Raises ExportError naming
    the first node this translation has no rule for; nothing is written then.
    """
    return save_checked(_Translator(graph).translate(), path)


def integer_op_report(path: str | Path) -> dict[str, int]:
    """How ONNX Runtime (CPU) runs the layers and adds of an exported graph after its optimizations:
    counts of integer kernels (QLinearConv, QGemm, QLinearAdd) and of what is left float."""
    ops = optimized_op_counts(path)
    return {
        "integer_conv": ops["QLinearConv"],
        "float_conv": ops["Conv"] + ops["FusedConv"],
        "integer_gemm": ops["QGemm"] + ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"],
        "float_gemm": ops["Gemm"] + ops["FusedGemm"] + ops["MatMul"],
        "integer_add": ops["QLinearAdd"],
        "float_add": ops["Add"],
    }


def write_onnx(graph: IntegerGraph | QDQModel, path: str | Path) -> Path:
    """One bit-width's ONNX file: an all-integer graph translated here, or a quantize/dequantize model
    through torch.onnx."""
    return export_qdq_onnx(graph, path) if isinstance(graph, QDQModel) else export_integer_onnx(graph, path)


def write_onnx_folder(graphs: Sequence[IntegerGraph | QDQModel], folder: str | Path,
                      weight_bits: Sequence[float] | None = None, accuracy_level: int | None = None) -> Path:
    """One ONNX file per bit-width in `folder` (an all-integer graph, or a quantize/dequantize model through
    torch.onnx) and the manifest `adabits.runtime.load` reads (`adabits_onnx.json`: bit-widths, file names,
    input shape, uint8 input; `weight_bits`, each file's bits per weight; `accuracy_level`, the linear
    layers' compute, which OpenVINO is told), each written atomically."""
    from ..quant.bitwidth import bits_tag
    from ..runtime import ONNX_MANIFEST

    if not graphs:
        raise ExportError("an ONNX folder needs at least one bit-width")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for graph in graphs:
        name = f"model_{bits_tag(graph.bits)}.onnx"
        write_onnx(graph, folder / name)
        files[str(graph.bits)] = name
    manifest: dict[str, object] = {"files": files, "input_shape": list(graphs[0].input_shape),
                                    "uint8_input": graphs[0].uint8_input}
    if weight_bits is not None:
        manifest["weight_bits"] = {str(graph.bits): b for graph, b in zip(graphs, weight_bits)}
    if accuracy_level is not None:
        manifest["accuracy_level"] = accuracy_level
    with atomic_write(folder / ONNX_MANIFEST) as f:
        f.write(json.dumps(manifest, indent=2).encode())
    return folder
