"""What an ExecuTorch edge program runs where: in the XNNPACK delegate or the portable runtime, on integer or float data."""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .pte import op_name

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager


@dataclass(frozen=True)
class DelegationCounts:
    """How an edge program splits between XNNPACK and the portable runtime.

    delegate_calls: executorch_call_delegate nodes (one per XNNPACK subgraph); delegated_ops: the ops
    inside those subgraphs, by name (quantize/dequantize included: XNNPACK folds them into its integer
    kernels); outside_ops: the ops the portable runtime runs, by name; float_ops: the delegated compute
    ops (not quantize/dequantize) that read a float tensor, i.e. that run on float data (see
    `delegated_op_counts`). An all-integer program has no outside_ops and no float_ops."""

    delegate_calls: int
    delegated_ops: Counter[str]
    outside_ops: Counter[str]
    float_ops: Counter[str]

    @property
    def all_delegated(self) -> bool:
        return not self.outside_ops

    @property
    def all_integer(self) -> bool:
        return self.all_delegated and not self.float_ops


def _is_qdq(name: str) -> bool:
    return name.startswith("quantized_decomposed.")


def _float_ops(program: torch.export.ExportedProgram) -> Counter[str]:
    """The compute ops of one delegated subgraph that read float data.

    An op reads integer data when each of its tensor arguments is a dequantize output (an int8 tensor
    with its scale), a constant of the subgraph (weights, biases: XNNPACK packs them, the bias as int32),
    or the single-use output of an op that reads integer data itself (the activation XNNPACK fuses into
    the convolution before it, as in dequantize -> conv -> relu -> quantize)."""
    constants = {node.name for node in program.graph.nodes if node.op == "placeholder"} - set(
        program.graph_signature.user_inputs)
    integer: set[str] = set()
    floating: Counter[str] = Counter()
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem or _is_qdq(op_name(node.target)):
            continue
        reads_integer = all(
            (arg.op == "call_function" and op_name(arg.target).startswith("quantized_decomposed.dequantize"))
            or arg.name in constants or (arg.name in integer and len(arg.users) == 1)
            for arg in node.all_input_nodes)
        if reads_integer:
            integer.add(node.name)
        else:
            floating[op_name(node.target)] += 1
    return floating


def delegated_op_counts(edge: EdgeProgramManager, method: str = "forward") -> DelegationCounts:
    """`DelegationCounts` of one method of an edge program (what `float32_edge` / `int8_peer_edge` return).

    getitem nodes (they unpack a delegate's outputs and run nothing) and the size reads of a dynamic batch
    (`sym_size`) are not counted as ops."""
    graph_module = edge.exported_program(method).graph_module
    delegated: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    calls = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if op_name(node.target) == "executorch_call_delegate":
            calls += 1
            inner = getattr(graph_module, node.args[0].target).original_module
            delegated.update(op_name(op.target) for op in inner.graph.nodes
                             if op.op == "call_function" and op.target is not operator.getitem)
            floating.update(_float_ops(inner))
        elif "sym_size" not in op_name(node.target):
            outside[op_name(node.target)] += 1
    return DelegationCounts(calls, delegated, outside, floating)


