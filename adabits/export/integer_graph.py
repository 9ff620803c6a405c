"""One bit-width of a trained model as an all-integer graph, written in PyTorch.

Every quantized conv/linear layer between the first and the classifier reads int8 codes, multiplies
them with int8 per-channel weights (BN folded in) and writes int8 codes; so do the residual adds.
Where the fake-quant model already has integer codes (a layer's PACT input, the raw image) the
graph uses exactly those. What it has in float, the graph quantizes to 8 bits on a grid calibrated
on training images (min/max, `Grid.covering`): the tensors that meet at a residual add and the
add's output, and a layer's input that arrives in float (the classifier's, after pooling). A model
trained with `quantize_residual` has these tensors on 8-bit grids already (`Int8Observer`): the
graph takes the observers' grids, and rounds where the model rounds. Otherwise it is export-time
calibration, a rounding the trained model never saw (`benchmarks/deploy/deploy_integer.py` measures both).
A calibrated grid that is next requantized onto a PACT grid takes a step of that grid's / k, k odd,
so the two roundings give PACT's own codes.

The graph is a `torch.fx.GraphModule` of aten ops and `quantized_decomposed` quantize / dequantize
ops, the form ExecuTorch's XNNPACK partitioner lowers to integer kernels (`pte.py`) and the source
the ONNX export translates (`onnx_integer.py`). Run in PyTorch it computes what the runtimes
compute, except that PyTorch sums products in float where the kernels sum integers, so a value on
a rounding tie can land one code apart (about one code in a thousand per layer in a trial).

What the int8 form cannot hold exactly:
- weight codes that need 9 bits (`centered` and `original` at 8 bits: odd integers up to 255). The
  first layer (it reads the image) keeps them in a float kernel, exact (`IntegerGraph.float_layers`):
  rounded to int8 there, the error spread through the whole network (the main job at 4 bits: 2% of
  its predictions changed). Any other such layer's folded float weight is requantized to int8 per
  output channel, named in `IntegerGraph.requantized_weights` (the main job at 8 bits);
- the bias: kernels add it as an int32 number of steps input_scale x weight_scale, so the graph
  rounds it to that grid, made finer by multiplying each channel's codes by an integer where
  int8 allows (`int8_layer.weight_multipliers`).
The classifier keeps float weights and a float output (its logits are not requantized).

Which traced ops the graph takes is `op_rules.SOURCE_RULES` (its `integer` column names the `_Builder`
method that writes each); any other op is refused by name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ExportError
from ..quant.assignment import layer_pairs
from ..quant.bitwidth import FULL_PRECISION, NamedAssignment, format_bits, get_bits, set_bits
from ..quant.grid import INT8_MAX, INT8_MIN, Grid
from ..quant.layers import QuantLayer, SwitchBatchNorm2d
from ..quant.residual import Int8Observer
from .int8_layer import (
    PAIR_PRODUCT_LIMIT,
    FoldedLayer,
    check_integer_input,
    fold_layer,
    input_factor,
    weight_multipliers,
)
from .op_rules import DEQUANTIZE, DEQUANTIZE_CHANNELS, QUANTIZE, node_rule
from .trace import trace_quantized

IMAGE_GRID = Grid.codes(1.0, 255)  # the raw uint8 image of a `normalize: false` model, read as codes
CALIBRATION_BATCH = 128


class RangeObserver(nn.Module):
    """Records the smallest and largest value it sees (the calibration pass), returning its input."""

    def __init__(self) -> None:
        super().__init__()
        self.low, self.high = float("inf"), float("-inf")

    def forward(self, x: Tensor) -> Tensor:
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))
        return x


@dataclass
class _Value:
    """A tensor of the new graph: int8 codes on `grid`, or float when `grid` is None."""

    node: fx.Node
    grid: Grid | None = None


@dataclass
class IntegerGraph:
    """One bit-width's integer graph (`module(images) -> logits`) and what the export had to change."""

    module: fx.GraphModule
    bits: Any
    input_shape: tuple[int, int, int]
    uint8_input: bool
    requantized_weights: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)

    def __call__(self, images: Tensor) -> Tensor:
        return self.module(images.float())


def _integer_rule(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    rule = node_rule(node, modules)
    return None if rule is None else rule.integer


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return _integer_rule(node, modules) == "relu"


def _is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return _integer_rule(node, modules) == "passthrough"


class _Builder:
    """Walks the fx trace of the model once and writes the integer graph.

    With `ranges` None it writes the calibration graph instead: every tensor that will be
    quantized on a calibrated grid passes through a RangeObserver and stays float.
    """

    def __init__(self, model: nn.Module, source: fx.Graph, uint8_input: bool,
                 ranges: dict[str, tuple[float, float]] | None, align: bool = True,
                 pair_limit: int | None = PAIR_PRODUCT_LIMIT) -> None:
        self.modules = dict(model.named_modules())
        self.source = source
        self.uint8_input = uint8_input
        self.ranges = ranges
        self.align = align
        self.pair_limit = pair_limit
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.observers: dict[str, RangeObserver] = {}
        self.values: dict[fx.Node, _Value] = {}
        self.requantized_weights: list[str] = []
        self.float_layers: list[str] = []
        self.count = 0
        #: the rules `op_rules.SOURCE_RULES` names in its `integer` column
        self.rules: dict[str, Callable[[fx.Node, nn.Module | None], _Value]] = {
            "quant_layer": self.quant_layer, "lone_norm": self.lone_norm, "observer": self.observer,
            "passthrough": self.passthrough, "relu": self.relu, "add": self.add, "pool": self.pool,
            "max_pool": self.max_pool, "flatten": self.flatten,
        }

    # ------------------------------------------------------------------ graph pieces
    def const(self, tensor: Tensor, hint: str) -> fx.Node:
        self.count += 1
        name = f"{hint.replace('.', '_')}_{self.count}"
        self.root.register_buffer(name, tensor)
        return self.graph.get_attr(name)

    def call(self, fn: Any, *args: Any) -> fx.Node:
        return self.graph.call_function(fn, tuple(args))

    def quantize(self, x: fx.Node, grid: Grid) -> _Value:
        node = self.call(QUANTIZE, x, grid.scale, grid.int8_offset, INT8_MIN, INT8_MAX, torch.int8)
        node.meta["grid"] = grid
        return _Value(node, grid)

    def real(self, value: _Value) -> fx.Node:
        """The value as a float tensor: a fresh DequantizeLinear per use, the pattern the runtimes fuse."""
        if value.grid is None:
            return value.node
        grid = value.grid
        node = self.call(DEQUANTIZE, value.node, grid.scale, grid.int8_offset, INT8_MIN, INT8_MAX, torch.int8)
        node.meta["grid"] = grid
        return node

    def calibrated(self, x: fx.Node, key: str, source: fx.Node | None = None, min_scale: float = 0.0) -> _Value:
        """`x` on the 8-bit grid that covers its calibrated range (or observed, in the calibration pass),
        aligned to the PACT grid the source node's value is requantized onto next; a step of at least
        `min_scale`."""
        if self.ranges is None:
            observer = self.observers.setdefault(key, RangeObserver())
            name = f"observer_{len(self.observers)}"
            self.root.add_module(name, observer)
            return _Value(self.graph.call_module(name, (x,)))
        align = self._next_pact_grid(source) if source is not None and self.align else None
        return self.quantize(x, Grid.covering(*self.ranges[key], align=align, min_scale=min_scale))

    def on_grid(self, value: _Value, grid: Grid) -> _Value:
        """`value` requantized onto `grid` (PACT's codes: below 0 clipped by a ReLU, above by saturation)."""
        if value.grid == grid:
            return value
        x = self.real(value)
        if grid.low == 0 and not (value.grid is not None and value.grid.nonnegative):
            x = self.call(torch.relu, x)
        return self.quantize(x, grid)

    # ------------------------------------------------------------------ the source graph
    def _only_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def _consumer_grid(self, node: fx.Node) -> Grid | None:
        """The grid `node` is stored on for its uses (through ReLUs and identities): the grid of the 8-bit
        observer it feeds (`quantize_residual`), else the one PACT grid every use quantizes it to, else None."""
        pact: set[Grid] = set()
        residual: set[Grid] = set()
        pending = list(node.users)
        while pending:
            user = pending.pop()
            module = self.modules.get(str(user.target)) if user.op == "call_module" else None
            if _is_relu(user, self.modules) or _is_passthrough(user, self.modules):
                pending.extend(user.users)
            elif isinstance(module, QuantLayer) and module.quantizes_input:
                pact.add(_pact_grid(module, str(user.target)))
            elif isinstance(module, Int8Observer):
                residual.add(_observer_grid(module, str(user.target)))
            else:
                return None
        if residual:
            return residual.pop() if len(residual) == 1 else None
        return pact.pop() if len(pact) == 1 else None

    def _next_pact_grid(self, node: fx.Node) -> Grid | None:
        """The PACT grid of the first quantized layer that `node`'s value reaches (through ReLUs,
        identities and residual adds), nearest first."""
        pending, seen = list(node.users), set()
        while pending:
            user = pending.pop(0)
            if user in seen:
                continue
            seen.add(user)
            module = self.modules.get(str(user.target)) if user.op == "call_module" else None
            if isinstance(module, QuantLayer) and module.quantizes_input:
                return _pact_grid(module, str(user.target))
            if (_is_relu(user, self.modules) or _is_passthrough(user, self.modules)
                    or _integer_rule(user, self.modules) == "add"):
                pending.extend(user.users)
        return None

    def _arg(self, node: fx.Node, index: int = 0) -> _Value:
        source = node.args[index]
        if not isinstance(source, fx.Node):
            raise ExportError(f"{node.name}: its input is the constant {source!r}, which has no integer export rule")
        return self.values[source]

    # ------------------------------------------------------------------ quantized layers
    def _layer_input(self, layer: QuantLayer, name: str, value: _Value) -> _Value:
        """The layer's input as int8 codes: its own PACT codes, the exact image codes, or a calibrated grid."""
        if layer.quantizes_input:
            return self.on_grid(value, _pact_grid(layer, name))
        if layer.act_bits < FULL_PRECISION or layer.weight_only:
            if value.grid is not None:
                return value
            return self.calibrated(value.node, f"{name}.input")
        raise ExportError(f"layer {name} reads float activations at this bit-width; an integer graph needs "
                          "activation bits <= 8")

    def _finer(self, codes: _Value, folded: FoldedLayer) -> _Value:
        """PACT codes k re-stored as k x f at scale / f (f an integer, as far as int8 holds them): the
        same values, on a grid that makes the kernel's int32 bias grid (input x weight step) f times
        finer. The bias is the one number an integer kernel cannot take exactly; rounded on the plain
        grid it flipped the codes of the next layer for 2% of the main job's test images at 4 bits."""
        grid = codes.grid
        assert grid is not None and folded.codes is not None
        factor = input_factor(folded.codes, grid.high, self.pair_limit)
        if factor == 1:
            return codes
        return self.quantize(self.real(codes), Grid(float(np.float32(grid.scale / factor)), 0, grid.high * factor))

    def _int8_weight(self, name: str, folded: FoldedLayer, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(int8 codes, float32 per-channel scales): the layer's own codes, or its float weight
        requantized to int8 when the codes need 9 bits."""
        if folded.codes is not None and folded.fits_int8():
            multiplier = weight_multipliers(folded, grid.scale, grid.high - grid.low, self.pair_limit)
            shape = (-1, *([1] * (folded.codes.ndim - 1)))
            return (folded.codes * multiplier.reshape(shape)).astype(np.int8), (folded.scale / multiplier).astype(np.float32)
        self.requantized_weights.append(name)
        weight = folded.float_weight()
        top = np.maximum(np.abs(weight.reshape(len(weight), -1)).max(axis=1), 1e-12)
        scale = (top / INT8_MAX).astype(np.float32)
        codes = np.round(weight / scale.astype(np.float64).reshape(-1, *([1] * (weight.ndim - 1))))
        return np.clip(codes, INT8_MIN, INT8_MAX).astype(np.int8), scale

    def _kernel(self, layer: QuantLayer, x: fx.Node, weight: fx.Node, bias: fx.Node) -> fx.Node:
        if isinstance(layer, nn.Conv2d):
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ExportError(f"padding {layer.padding!r} / padding_mode {layer.padding_mode!r} cannot be "
                                  "exported; use integer zero padding")
            return self.call(torch.ops.aten.conv2d.default, x, weight, bias, list(layer.stride),
                             list(layer.padding), list(layer.dilation), layer.groups)
        return self.call(torch.ops.aten.linear.default, x, weight, bias)

    def quant_layer(self, node: fx.Node, layer: nn.Module | None) -> _Value:
        assert isinstance(layer, QuantLayer)
        name = str(node.target)
        chain = [node]
        bn_node = self._only_user(node)
        bn = None
        if bn_node is not None and bn_node.op == "call_module" and isinstance(self.modules[str(bn_node.target)], SwitchBatchNorm2d):
            bn = self.modules[str(bn_node.target)].active  # type: ignore[union-attr]
            chain.append(bn_node)
        relu_node = self._only_user(chain[-1])
        if relu_node is not None and _is_relu(relu_node, self.modules):
            chain.append(relu_node)
        folded = fold_layer(layer, bn)
        source = self._arg(node)
        if any(user.op == "output" for user in chain[-1].users) or folded.codes is None:
            out = self._float_layer(name, layer, folded, source, relu=_is_relu(chain[-1], self.modules))
        else:
            out = self._integer_layer(name, layer, folded, source, chain)
        for member in chain:
            self.values[member] = out
        return out

    def _float_layer(self, name: str, layer: QuantLayer, folded: FoldedLayer, source: _Value, relu: bool) -> _Value:
        """The classifier: its input codes in float, the exact folded weight in float, float logits."""
        x = self.real(self._layer_input(layer, name, source)) if layer.quantizes_input else self.real(source)
        weight = self.const(torch.from_numpy(folded.float_weight().astype(np.float32)), f"{name}.weight")
        bias = self.const(torch.from_numpy(folded.bias.astype(np.float32)), f"{name}.bias")
        out = self._kernel(layer, x, weight, bias)
        return _Value(self.call(torch.relu, out) if relu else out)

    def _integer_layer(self, name: str, layer: QuantLayer, folded: FoldedLayer, source: _Value,
                       chain: list[fx.Node]) -> _Value:
        codes = self._layer_input(layer, name, source)
        if codes.grid is not None and layer.quantizes_input and folded.codes is not None and folded.fits_int8():
            codes = self._finer(codes, folded)
        # a float kernel: in the calibration pass where the input is still being observed, and for a first
        # layer (it reads the image, not PACT codes) whose weight codes need 9 bits, which it keeps exactly
        exact_float = codes.grid is not None and not layer.quantizes_input and not folded.fits_int8()
        if codes.grid is None or exact_float:
            w = self.const(torch.from_numpy(folded.float_weight().astype(np.float32)), f"{name}.weight")
            bias = folded.bias.astype(np.float32)
            weight_scale = np.ones(1, np.float32)
            if exact_float:
                self.float_layers.append(name)
        else:
            weight, weight_scale = self._int8_weight(name, folded, codes.grid)
            bias_scale = (np.float32(codes.grid.scale) * weight_scale).astype(np.float32)
            bias = (np.round(folded.bias / bias_scale.astype(np.float64)) * bias_scale).astype(np.float32)
            w = self.call(DEQUANTIZE_CHANNELS, self.const(torch.from_numpy(weight), f"{name}.weight_int8"),
                          self.const(torch.from_numpy(weight_scale), f"{name}.weight_scale"),
                          self.const(torch.zeros(len(weight_scale), dtype=torch.int64), f"{name}.weight_zero"),
                          0, INT8_MIN, INT8_MAX, torch.int8)
        out = self._kernel(layer, self.real(codes), w, self.const(torch.from_numpy(bias), f"{name}.bias"))
        out.meta["layer"] = name
        # XNNPACK requantizes a conv's sums by input_scale x weight_scale / output_scale, below 256 only
        step = 0.0 if codes.grid is None or exact_float else float(np.max(codes.grid.scale * weight_scale)) / 255
        end = chain[-1]
        grid = self._consumer_grid(end)
        if (grid is not None and grid.low == 0) or _is_relu(end, self.modules):  # a clip at 0: a ReLU the kernel fuses
            out = self.call(torch.relu, out)
        return self.quantize(out, grid) if grid is not None else self.calibrated(out, f"{name}.output", end, step)

    # ------------------------------------------------------------------ other ops
    def add(self, node: fx.Node, _module: nn.Module | None) -> _Value:
        a, b = self._arg(node, 0), self._arg(node, 1)
        out = self.call(torch.ops.aten.add.Tensor, self.real(a), self.real(b))
        chain = [node]
        relu_node = self._only_user(node)
        if relu_node is not None and _is_relu(relu_node, self.modules):
            chain.append(relu_node)
        grid = self._consumer_grid(chain[-1])
        if (grid is not None and grid.low == 0) or len(chain) > 1:  # a clip at 0: a ReLU the kernel fuses
            out = self.call(torch.relu, out)
        value = self.quantize(out, grid) if grid is not None else self.calibrated(out, f"{node.name}.output", chain[-1])
        for member in chain:
            self.values[member] = value
        return value

    def relu(self, node: fx.Node, _module: nn.Module | None) -> _Value:
        value = self._arg(node)
        if value.grid is not None and value.grid.nonnegative:
            return value
        out = self.call(torch.relu, self.real(value))
        return self.quantize(out, value.grid) if value.grid is not None else _Value(out)

    def pool(self, node: fx.Node, module: nn.Module | None) -> _Value:
        """A global average pool: nn.AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1), or x.mean([2, 3])."""
        if isinstance(module, nn.AdaptiveAvgPool2d):
            is_global, keepdim = module.output_size in (1, (1, 1)), True
        elif node.target == "mean":
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
            is_global = isinstance(dims, (list, tuple)) and list(dims) == [2, 3]
        else:  # F.adaptive_avg_pool2d(x, output_size)
            is_global, keepdim = len(node.args) > 1 and node.args[1] in (1, (1, 1)), True
        if not is_global:
            raise ExportError(f"{node.name}: only a global average pool (output size 1, or the mean over dims "
                              "[2, 3]) has an integer export rule")
        out = self.call(torch.ops.aten.mean.dim, self.real(self._arg(node)), [2, 3], True)
        return _Value(out if keepdim else self.call(torch.ops.aten.flatten.using_ints, out, 1))

    def max_pool(self, node: fx.Node, module: nn.Module | None) -> _Value:
        value = self._arg(node)
        assert isinstance(module, nn.MaxPool2d)  # the table's only max pool
        if module.ceil_mode or module.dilation not in (1, (1, 1)):
            raise ExportError(f"{node.target}: MaxPool2d with ceil_mode or dilation has no integer export rule")
        out = self.call(F.max_pool2d, self.real(value), module.kernel_size, module.stride, module.padding)
        return self.quantize(out, value.grid) if value.grid is not None else _Value(out)

    def flatten(self, node: fx.Node, module: nn.Module | None) -> _Value:
        """A (N, C, 1, 1) pool output or an (N, C, H, W) map flattened from dimension 1 (torch.flatten, nn.Flatten)."""
        start: object
        end: object
        if isinstance(module, nn.Flatten):
            start, end = module.start_dim, module.end_dim
        else:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.kwargs.get("end_dim", -1)
        if start != 1 or end != -1:
            span = f"{start}" if end == -1 else f"{start} to {end}"
            raise ExportError(f"{node.name}: flatten from dimension {span} has no export rule (only from 1 to the last)")
        return _Value(self.call(torch.ops.aten.flatten.using_ints, self.real(self._arg(node)), 1))

    def passthrough(self, node: fx.Node, _module: nn.Module | None) -> _Value:
        """Identity, Dropout (eval) and `as_float_input` (a dtype cast the graph's float input makes moot)."""
        return self._arg(node)

    def observer(self, node: fx.Node, module: nn.Module | None) -> _Value:
        assert isinstance(module, Int8Observer)
        return self.on_grid(self._arg(node), _observer_grid(module, str(node.target)))

    def lone_norm(self, node: fx.Node, _module: nn.Module | None) -> _Value:
        raise ExportError(f"{node.target}: a BatchNorm that does not follow a quantized layer cannot be folded "
                          "into an integer kernel")

    def write(self, node: fx.Node) -> None:
        """Write one traced node with the rule `op_rules.SOURCE_RULES` names for it."""
        module = self.modules[str(node.target)] if node.op == "call_module" else None
        rule = node_rule(node, self.modules)
        method = self.rules.get(rule.integer) if rule is not None and rule.integer is not None else None
        if method is None:
            what = (f"module {node.target} ({type(module).__name__})" if module is not None
                    else f"operation {node.name} ({node.target})")
            raise ExportError(f"{what} has no integer export rule")
        self.values[node] = method(node, module)

    def build(self) -> fx.GraphModule:
        for node in self.source.nodes:
            if node in self.values or node.op == "get_attr":
                continue  # folded into a layer before, or only read by as_float_input for its dtype
            if node.op == "placeholder":
                x = self.graph.placeholder("images")
                self.values[node] = self.quantize(x, IMAGE_GRID) if self.uint8_input else _Value(x)
            elif node.op in ("call_module", "call_function", "call_method"):
                self.write(node)
            elif node.op == "output":
                self.graph.output(self.real(self._arg(node)))
        return fx.GraphModule(self.root, self.graph)


def _pact_grid(layer: QuantLayer, name: str) -> Grid:
    """The grid of the layer's own input codes at its current bit-width; what the int8 form cannot express is refused."""
    check_integer_input(layer, name)
    return Grid.codes(layer.input_scale(), layer.input_max_code())


def _observer_grid(module: Int8Observer, name: str) -> Grid:
    try:
        return module.grid()
    except ValueError as exc:
        raise ExportError(f"{name}: {exc}") from None


def _batches(images: Tensor) -> Iterable[Tensor]:
    for start in range(0, len(images), CALIBRATION_BATCH):
        yield images[start:start + CALIBRATION_BATCH].float()


@torch.no_grad()
def integer_graph(model: nn.Module, bits: object, input_shape: tuple[int, int, int], calibration: Tensor,
                  *, uint8_input: bool = True, align_grids: bool = True,
                  pair_limit: int | None = PAIR_PRODUCT_LIMIT) -> IntegerGraph:
    """`model` at `bits` (a bit-width, or a NamedAssignment: each layer at its own) as an all-integer graph, its
    8-bit grids calibrated on `calibration` images.

    `pair_limit` bounds |input code| x |weight code| of each product: ONNX Runtime's u8s8 kernels on
    x86 CPUs without VNNI add pairs of products in int16 with saturation (int8_layer.py). XNNPACK
    widens before it adds, so a `.pte` takes None: larger integer factors, a finer bias grid.

    `calibration`: training images as the model takes them (N x C x H x W; raw 0..255 pixels for
    `uint8_input`, the models trained with `normalize: false`). The model's bit-width and mode are
    restored. Raises ExportError (a ValueError) for what an integer graph cannot express.
    """
    pairs = layer_pairs(model, bits)  # type: ignore[arg-type]
    wide = [p for p in pairs if max(p) > 8]
    if wide:
        raise ExportError(f"an integer graph takes bits <= 8 (int8 kernels), got {format_bits(wide[0])}")
    if len(calibration) == 0:
        raise ExportError("an integer graph needs calibration images for its 8-bit grids; got none")
    setting = bits if isinstance(bits, NamedAssignment) else format_bits(pairs[0])
    previous, was_training = get_bits(model), model.training
    set_bits(model, setting)
    model.eval()
    try:
        source = trace_quantized(model)
        observing = _Builder(model, source, uint8_input, ranges=None)
        calibrating = observing.build()
        for batch in _batches(calibration):
            calibrating(batch)
        ranges = {key: (o.low, o.high) for key, o in observing.observers.items()}
        builder = _Builder(model, source, uint8_input, ranges=ranges, align=align_grids, pair_limit=pair_limit)
        module = builder.build()
    finally:
        set_bits(model, previous)
        model.train(was_training)
    return IntegerGraph(module, setting, tuple(input_shape), uint8_input,  # type: ignore[arg-type]
                        builder.requantized_weights, builder.float_layers)
