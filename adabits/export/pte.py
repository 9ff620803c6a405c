"""ExecuTorch export: one `.pte` file, one method per bit-width, lowered to XNNPACK's integer kernels.

Each bit-width's `IntegerGraph` is exported with `torch.export` (batch dimension dynamic) and the
set is lowered together, so the weights of every bit-width sit in one program and switching
bit-width is choosing a method (`forward_8`, `forward_4`, `forward_w4a8`): nothing is reloaded.
The file needs ExecuTorch's runtime alone; its constant methods say what it holds
(`bits_list`, their `method_names`, `input_shape`, `uint8_input`: see `adabits.runtime`).

Sub-8-bit weight codes are stored in int8 containers (quant range -128..127): XNNPACK reads a
4-bit range as its 4-bit path, which holds 2-D weights only and fails on convolutions. The packed
safetensors file stays the compact format.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import ExportError
from ..quant.bitwidth import bits_tag
from .integer_graph import IntegerGraph

MAX_BATCH = 4096


def method_name(bits: object) -> str:
    """The program method of one bit-width: `forward_8`, `forward_w4a8`."""
    tag = bits_tag(bits)
    return f"forward_{tag[:-3]}" if tag.endswith("bit") else f"forward_{tag}"


def lowered_program(graphs: Sequence[IntegerGraph]):  # type: ignore[no-untyped-def]  # executorch types are optional
    """The edge program of `graphs` lowered to XNNPACK (before serialisation: its graphs show what was delegated)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if not graphs:
        raise ExportError("a .pte export needs at least one bit-width")
    shapes = {g.input_shape for g in graphs}
    if len(shapes) != 1:
        raise ExportError(f"every bit-width of one .pte takes the same input shape; got {sorted(shapes)}")
    (shape,) = shapes
    example = torch.zeros(2, *shape)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    constants = {"bits_list": [str(g.bits) for g in graphs], "method_names": [method_name(g.bits) for g in graphs],
                 "input_shape": list(shape),
                 "uint8_input": graphs[0].uint8_input}
    # PyTorch's choice of a CPU conv backend branches on batch >= 16 (MKL-DNN, NNPACK); traced with a
    # symbolic batch, that branch would bound the program's batch to one side of 16
    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        programs = {method_name(g.bits): torch.export.export(g.module, (example,), dynamic_shapes=({0: batch},))
                    for g in graphs}
        return to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()], constant_methods=constants)


def export_pte(graphs: Sequence[IntegerGraph], path: str | Path) -> Path:
    """Write one `.pte` holding a method per graph (one per bit-width), written atomically."""
    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        program = lowered_program(graphs).to_executorch()
    path = Path(path)
    with atomic_write(path) as f:
        f.write(program.buffer)
    return path


def undelegated_ops(graphs: Sequence[IntegerGraph]) -> dict[str, list[str]]:
    """Per method, the compute ops left outside the XNNPACK delegate (views and getitems aside):
    an all-integer lowering leaves none."""
    edge = lowered_program(graphs)
    shape_ops = ("view_copy", "getitem", "sym_size", "executorch_call_delegate")
    left: dict[str, list[str]] = {}
    for name in edge.methods:
        nodes = edge.exported_program(name).graph_module.graph.nodes
        left[name] = [str(n.target) for n in nodes if n.op == "call_function"
                      and not any(s in str(n.target) for s in shape_ops)]
    return left
