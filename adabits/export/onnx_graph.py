"""A small ONNX graph builder: nodes and initializers with unique names, and the names and opset every
exported graph shares (the all-integer translation, `onnx_integer.py`; torch.onnx, `qdq.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write

FLOAT = 1  # onnx.TensorProto.FLOAT (onnx is imported lazily: it is an optional dependency)
OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class Value:
    """A tensor of the graph; `image` marks the raw uint8 image input."""

    name: str
    image: bool = False


@dataclass
class GraphBuilder:
    """Collects nodes and initializers; every name it makes is unique."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    count: int = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint.replace('.', '_')}_{self.count}"

    def const(self, array: np.ndarray | np.generic, hint: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op), **attrs))
        return out

    def as_float(self, value: Value) -> str:
        return self.node("Cast", [value.name], "as_float", to=FLOAT) if value.image else value.name


def save_checked(proto: Any, path: str | Path, checked: Any = None) -> Path:
    """Check an ONNX model proto and write it to `path` atomically (a failed check writes nothing). A proto
    whose tensors point to external data is checked as `checked`, the same model with that data inline."""
    import onnx

    onnx.checker.check_model(checked if checked is not None else proto)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path
