"""Each quantized layer's latency at each bit-width in ONNX Runtime: the `latency` cost of `adabits search`.

Weight bytes and BitOPs say a 4-bit layer costs half an 8-bit one; in a runtime that holds true only where
a kernel reads 4-bit weights (ONNX Runtime's `MatMulNBits` for linear layers, `adabits/export/nbits_linear.py`)
and is false for convolutions, which run int8 kernels at every bit-width. So each quantized layer is
exported alone in its ONNX quantize/dequantize form at that bit-width (`qdq.qdq_model`: ONNX Runtime fuses a
convolution's into an integer kernel, a linear layer is `MatMulNBits` where a fast kernel holds its codes),
with the input shape it sees in the model at batch 1, and timed in its own session: every layer and
bit-width interleaved round by round, the median kept, in microseconds. What does not change with the
assignment (norms, activations, attention, the rest of the graph) is left out, so a front's latency is the
quantized layers' summed latency, not the model's.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..quant.assignment import quantized_layers
from ..quant.bitwidth import Bits, bits_tag, get_bits_list, parse_bits, use_bits

#: rounds of the interleaved timing (each round runs every layer at every bit-width once)
ROUNDS = 30


def _input_shapes(model: nn.Module, input_size: tuple[int, ...], names: list[str]) -> dict[str, tuple[int, ...]]:
    """The shape of each named layer's input in one forward of a zero batch of one (the layers' first call)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _export_layer(layer: nn.Module, bits: Bits, shape: tuple[int, ...], path: Path) -> Path:
    from ..export.qdq import QDQModel, export_qdq_onnx

    dynamic = ("tokens",) if len(shape) == 3 else ()  # a sequence layer: (batch, tokens, features)
    return export_qdq_onnx(QDQModel(layer, bits, shape[1:], False), path, dynamic=dynamic)


def layer_latency(model: nn.Module, input_size: tuple[int, ...], *, accuracy_level: int = 0,
                  rounds: int = ROUNDS) -> dict[str, dict[Bits, float]]:
    """{quantized layer: {bits: median microseconds of one call at batch 1}} in ONNX Runtime (CPU, one thread
    per core), for every bit-width of the model of at most 8 bits; `accuracy_level` as `export_model` takes
    it. Needs onnxruntime and onnxscript (`pip install 'adabits[onnx]'`)."""
    from ..export.onnx_session import cpu_session
    from ..export.qdq import qdq_model

    names = list(quantized_layers(model))
    bits_list = [b for b in get_bits_list(model) if max(parse_bits(b)) <= 8]
    if not bits_list:
        raise UserError("cost=latency times the bit-widths of at most 8 bits an export writes; this model has none")
    was_training = model.training
    model.eval()
    try:
        with use_bits(model, bits_list[0]):
            shapes = _input_shapes(model, input_size, names)
        runs = {}
        with tempfile.TemporaryDirectory(prefix="adabits_layer_latency_") as folder:
            for bits in bits_list:
                twin = qdq_model(model, bits, input_size, uint8_input=False, nbits_linear=True,
                                 accuracy_level=accuracy_level)
                for index, name in enumerate(names):
                    path = _export_layer(twin.module.get_submodule(name), bits, shapes[name],
                                         Path(folder) / f"{index}_{bits_tag(bits)}.onnx")
                    session = cpu_session(path)
                    feed = {session.get_inputs()[0].name: np.random.default_rng(index).standard_normal(
                        shapes[name]).astype(np.float32)}
                    runs[name, bits] = (session, feed)
            for session, feed in runs.values():
                session.run(None, feed)  # warm
            times: dict[tuple[str, Bits], list[float]] = {key: [] for key in runs}
            for _ in range(rounds):
                for key, (session, feed) in runs.items():
                    start = time.perf_counter()
                    session.run(None, feed)
                    times[key].append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    latency: dict[str, dict[Bits, float]] = {name: {} for name in names}
    for (name, bits), seconds in times.items():
        latency[name][bits] = statistics.median(seconds) * 1e6
    return latency
