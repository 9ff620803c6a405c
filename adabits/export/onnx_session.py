"""ONNX Runtime on the CPU: one way to open a session, one way to get logits from it, and the ops its
optimizer leaves (which show what it fused into integer kernels).

Sessions do not spin their idle threads by default: a spinning ONNX Runtime pool keeps the cores
busy after each run and slows whatever runs next on them (PyTorch in the same process, timed side
by side, or other processes).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NUMPY_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(double)": np.float64}


def cpu_session(model: str | Path | bytes, threads: int | None = None, spinning: bool = False) -> Any:
    """An onnxruntime.InferenceSession on the CPU provider for a graph file or its serialized bytes.

    `threads` sets the intra-op pool (None: ONNX Runtime's choice, one per core); `spinning` lets
    idle pool threads busy-wait for the next run (ONNX Runtime's default, off here)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def session_logits(session: Any, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """The first output of a one-input `session` on `images`, cast to the dtype the graph's input
    declares (uint8 for an integer graph that reads raw images, float32 otherwise)."""
    graph_input = session.get_inputs()[0]
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    dtype = _NUMPY_TYPES.get(graph_input.type)
    if dtype is None:
        raise ValueError(f"graph input {graph_input.name!r} has type {graph_input.type}; expected one of "
                         f"{', '.join(_NUMPY_TYPES)}")
    array = np.ascontiguousarray(array.astype(dtype, copy=False))
    return session.run([session.get_outputs()[0].name], {graph_input.name: array})[0]


def run_onnx(path: str | Path, images: torch.Tensor | np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits of an exported file on `images` (cast to the graph's input type: uint8 or float32)."""
    return session_logits(cpu_session(path, threads), images)


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
