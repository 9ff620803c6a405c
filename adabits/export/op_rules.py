"""The op rules of the exporters, in one place: which ops each graph form writes, and with which rule.

Two tables, one per vocabulary:

- `SOURCE_RULES`: the ops of a model's torch.fx trace (a module, or a function or method it calls).
  Each row names the rule that writes the op in the all-integer graph (`integer`: a method of
  `integer_graph._Builder`) and in the quantize/dequantize graph (`qdq`: how `qdq.qdq_model`
  replaces such a module; None keeps the model's own code, which torch.export traces). `leaf` rows
  stay whole nodes of the trace (`trace.trace_quantized`). An op without a row, or a row without an
  integer rule, is what the all-integer graph refuses by name, and `graph="auto"` then writes the
  quantize/dequantize graph.
- `INTEGER_GRAPH_RULES`: the aten and quantize / dequantize ops an all-integer graph is made of, and the
  rule (a method of `onnx_integer._Translator`) that writes each in ONNX. The `.pte` needs no table:
  ExecuTorch lowers these ops itself.

A builder reads its column and maps rule names to its own methods; `tests/export/test_export_model.py` checks
that every rule named here is one a builder has, so a rule is added here and in the builder together.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..models.common import as_float_input
from ..quant.layers import QuantLayer, SwitchBatchNorm2d
from ..quant.norms import SwitchableNorm
from ..quant.residual import Int8Observer

QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor.default
DEQUANTIZE_CHANNELS = torch.ops.quantized_decomposed.dequantize_per_channel.default
CONV = torch.ops.aten.conv2d.default
LINEAR = torch.ops.aten.linear.default
ADD = torch.ops.aten.add.Tensor
MEAN = torch.ops.aten.mean.dim
FLATTEN = torch.ops.aten.flatten.using_ints


@dataclass(frozen=True)
class OpRule:
    """One source op: the module types and call targets (functions, or method names) it matches, and the
    rule of each graph form for it (None: that form has no rule of its own)."""

    op: str
    modules: tuple[type[nn.Module], ...] = ()
    targets: tuple[object, ...] = ()
    integer: str | None = None
    qdq: str | None = None
    leaf: bool = False


#: first match wins: the switchable BN row stands before the one of every switchable norm
SOURCE_RULES: tuple[OpRule, ...] = (
    OpRule("quantized conv / linear", modules=(QuantLayer,), integer="quant_layer", qdq="layer", leaf=True),
    OpRule("switchable BatchNorm", modules=(SwitchBatchNorm2d,), integer="lone_norm", qdq="active", leaf=True),
    OpRule("switchable norm", modules=(SwitchableNorm,), qdq="active"),
    OpRule("8-bit residual grid", modules=(Int8Observer,), integer="observer", leaf=True),
    OpRule("identity", modules=(nn.Identity, nn.Dropout), targets=(as_float_input,), integer="passthrough"),
    OpRule("ReLU", modules=(nn.ReLU,), targets=(F.relu, torch.relu), integer="relu"),
    OpRule("addition", targets=(operator.add, torch.add), integer="add"),
    OpRule("global average pool", modules=(nn.AdaptiveAvgPool2d,), targets=(F.adaptive_avg_pool2d, "mean"),
           integer="pool"),
    OpRule("max pool", modules=(nn.MaxPool2d,), integer="max_pool"),
    OpRule("flatten", modules=(nn.Flatten,), targets=(torch.flatten, "flatten"), integer="flatten"),
)

#: the ops of an all-integer graph and the rule that writes each in ONNX
INTEGER_GRAPH_RULES: dict[object, str] = {
    QUANTIZE: "quantize", DEQUANTIZE: "dequantize", DEQUANTIZE_CHANNELS: "dequantize_channels",
    CONV: "conv", LINEAR: "linear", ADD: "add", torch.relu: "relu", MEAN: "mean", FLATTEN: "flatten",
    F.max_pool2d: "max_pool",
}

LEAF_MODULES: tuple[type[nn.Module], ...] = tuple(m for rule in SOURCE_RULES if rule.leaf for m in rule.modules)


def module_rule(module: nn.Module) -> OpRule | None:
    """The row of a module, or None."""
    return next((rule for rule in SOURCE_RULES if isinstance(module, rule.modules)), None)


def node_rule(node: fx.Node, modules: dict[str, nn.Module]) -> OpRule | None:
    """The row of a traced node (a module call, or a function or method call), or None."""
    if node.op == "call_module":
        return module_rule(modules[str(node.target)])
    if node.op in ("call_function", "call_method"):
        return next((rule for rule in SOURCE_RULES if any(node.target is t or (isinstance(t, str) and node.target == t)
                                                           for t in rule.targets)), None)
    return None
