"""ExecuTorch export: one `.pte` file, one method per bit-width, lowered to XNNPACK's integer kernels.

Each bit-width's `IntegerGraph` is exported with `torch.export` (batch dimension dynamic up to
`max_batch`: ExecuTorch plans memory for it) and the set is lowered together, so the weights of
every bit-width sit in one program and switching bit-width is choosing a method (`forward_8`,
`forward_4`, `forward_w4a8`): nothing is reloaded. The file needs ExecuTorch's runtime alone; its
constant methods say what it holds (`bits_list`, their `method_names`, `input_shape`,
`uint8_input`: see `adabits.runtime`).

Sub-8-bit weight codes are stored in int8 containers (quant range -128..127): XNNPACK reads a
4-bit range as its 4-bit path, which holds 2-D weights only and fails on convolutions. The packed
safetensors file stays the compact format.

The lowering helpers here (`export_program`, `lower_xnnpack`, `to_pte`) serve any float or
quantized program; the deployment benchmark lowers its peers with them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import ExportError
from ..quant.bitwidth import bits_text
from ..runtime import PTE_MAX_BATCH
from .integer_graph import IntegerGraph
from .qdq import QDQModel

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager

#: the largest batch a program takes by default (ExecuTorch plans the memory of every tensor for it)
MAX_BATCH = PTE_MAX_BATCH


def method_name(bits: object) -> str:
    """The program method of one bit-width or named assignment: `forward_8`, `forward_w4a8`, `forward_mixed_fast`."""
    return bits_text(bits, "method")


@contextlib.contextmanager
def batch_free_conv_tracing() -> Iterator[None]:
    """Lowering to XNNPACK re-traces the graph with fake tensors; torch's fake convolution asks which eager
    CPU backend (MKLDNN, NNPACK) it would pick, and both choices test `batch >= 16`. On a symbolic batch
    that test becomes a guard that silently narrows the batch range to one side of 16, and ExecuTorch then
    plans memory for 15 images at most. With both backends off while lowering and serializing, no such test
    is made (this changes only which eager kernel a fake tensor pretends to use, never a result)."""
    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        yield


def export_program(model: nn.Module | torch.fx.GraphModule, example: torch.Tensor,
            max_batch: int | None) -> torch.export.ExportedProgram:
    """torch.export of `model` on `example`; with `max_batch`, the batch dimension is dynamic in [1, max_batch]
    (None: every dimension fixed at `example`'s shape)."""
    if max_batch is None:
        return torch.export.export(model, (example,))
    if max_batch < 2 or example.shape[0] > max_batch:
        raise ValueError(f"max_batch must be at least 2 and the example's batch ({example.shape[0]}); got "
                         f"{max_batch} (None fixes the batch)")
    if example.shape[0] == 1:
        # torch.export specializes a dimension traced at size 1 to the constant 1
        example = torch.cat([example, example])
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},))


def _inferred_batch_reshapes(graph_module: torch.fx.GraphModule) -> Any:
    """An edge pass: a reshape to [batch, features] with a symbolic batch becomes one to [-1, features].

    The flatten before the classifier reshapes to the input's symbolic batch size, which XNNPACK does not
    take (it takes one inferred dimension instead), so that one op would stay in the portable runtime and
    split the graph into two delegates. Where exactly one dimension is symbolic and the others are fixed,
    -1 infers the same size."""
    from torch.fx.passes.infra.pass_base import PassResult

    changed = False
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or op_name(node.target) != "view_copy.default":
            continue
        shape = list(node.args[1])
        symbolic = [index for index, size in enumerate(shape) if not isinstance(size, int)]
        if len(symbolic) == 1 and -1 not in shape:
            shape[symbolic[0]] = -1
            node.args = (node.args[0], shape, *node.args[2:])
            changed = True
    if changed:
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
    return PassResult(graph_module, changed)


def lower_xnnpack(programs: torch.export.ExportedProgram | dict[str, torch.export.ExportedProgram],
                  constant_methods: dict[str, Any] | None = None) -> EdgeProgramManager:
    """Exported programs (one, or a method name -> program dict) lowered together to XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with batch_free_conv_tracing():
        return to_edge_transform_and_lower(programs, transform_passes=[_inferred_batch_reshapes],
                                           partitioner=[XnnpackPartitioner()], constant_methods=constant_methods)


def to_pte(edge: EdgeProgramManager) -> bytes:
    """The .pte program of an edge program. Serializing re-traces the delegates, so it runs under
    `batch_free_conv_tracing` too (a plain `edge.to_executorch()` would cap a dynamic batch at 15)."""
    with batch_free_conv_tracing():
        return edge.to_executorch().buffer


def op_name(target: Any) -> str:
    """An op's name without the aten namespace (`convolution.default`, `quantized_decomposed.quantize...`)."""
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten.")


def integer_program(graphs: Sequence[IntegerGraph | QDQModel], max_batch: int = MAX_BATCH,
                    weight_bits: Sequence[float] | None = None) -> EdgeProgramManager:
    """The edge program of `graphs` (one method each: all-integer graphs, or quantize/dequantize models for
    what those cannot express) lowered to XNNPACK, before serialisation: its graphs show what was
    delegated (`pte_delegation.delegated_op_counts`)."""
    if not graphs:
        raise ExportError("a .pte export needs at least one bit-width")
    shapes = {g.input_shape for g in graphs}
    if len(shapes) != 1:
        raise ExportError(f"every bit-width of one .pte takes the same input shape; got {sorted(shapes)}")
    (shape,) = shapes
    example = torch.zeros(2, *shape)
    constants = {"bits_list": [str(g.bits) for g in graphs], "method_names": [method_name(g.bits) for g in graphs],
                 "input_shape": list(shape), "uint8_input": graphs[0].uint8_input, "max_batch": max_batch}
    if weight_bits is not None:  # bits per weight of each method, as text (what the runtime ranks them by)
        constants["weight_bits"] = [str(b) for b in weight_bits]
    programs = {method_name(g.bits): export_program(g.module, example, max_batch) for g in graphs}
    return lower_xnnpack(programs, constants)


def export_pte(graphs: Sequence[IntegerGraph | QDQModel], path: str | Path, max_batch: int = MAX_BATCH,
               weight_bits: Sequence[float] | None = None) -> Path:
    """Write one `.pte` holding a method per graph (one per bit-width or named assignment), atomically;
    `weight_bits`: each method's bits per weight, recorded for the runtime."""
    program = to_pte(integer_program(graphs, max_batch, weight_bits))
    path = Path(path)
    with atomic_write(path) as f:
        f.write(program)
    return path
