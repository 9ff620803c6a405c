"""The runtimes a user would deploy instead of our integer export, built from the same float network.

A deployment latency benchmark needs the baselines a user would pick instead of our own integer
export: the float model in ONNX Runtime and in ExecuTorch's XNNPACK backend, and each runtime's own
int8 post-training quantization of it (ONNX Runtime's `quantize_static`, ExecuTorch's PT2E flow with
the XNNPACK quantizer). Every peer starts from a plain float `nn.Module` in eval mode (for our models,
`adabits.quant.float_twin.float_twin` of one) and, for the int8 peers, a float calibration batch
N x C x H x W.

onnxruntime, executorch and torchao are imported inside the functions: they are optional extras.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from adabits.export.onnx_session import cpu_session
from adabits.export.pte import export_program, lower_xnnpack, to_pte

if TYPE_CHECKING:
    import onnxruntime
    from executorch.exir import EdgeProgramManager

#: names of the float graph's input and output; the batch dimension of both is dynamic
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: ONNX opset of the float graph: per-channel QDQ quantization needs 13 or more
OPSET = 17
#: images per calibration forward: ORT's calibrator keeps every intermediate tensor of a forward, so a
#: large batch at 224 x 224 would hold gigabytes at once
CALIBRATION_CHUNK = 8
#: the largest batch an ExecuTorch program with a dynamic batch dimension accepts (memory is planned for it)
MAX_BATCH = 32


def _chunks(batch: torch.Tensor, size: int = CALIBRATION_CHUNK) -> list[torch.Tensor]:
    return [chunk.contiguous() for chunk in batch.detach().float().split(size)]


def _require_eval(model: nn.Module) -> nn.Module:
    """Every peer is the network as it infers: a model in training mode would be exported with batch
    statistics (and changing its mode here would change the caller's model)."""
    if model.training:
        raise ValueError(f"{type(model).__name__} is in training mode; peers are built from a model in eval mode")
    return model


# ---------------------------------------------------------------------------------------------- ONNX Runtime


def export_float_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """`model` as a float ONNX graph at `path`, batch dimension dynamic.

    The TorchScript exporter (`dynamo=False`): a static CNN traces in one pass, BatchNorm is folded
    into the convolutions in eval mode, and the graph holds only standard ops (Conv, Relu, Add, Gemm),
    which is what ORT's quantizer and its kernels expect."""
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is deprecated in favour of dynamo=True
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_require_eval(model), (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return path


def ort_float32(model: nn.Module, example: torch.Tensor, path: str | Path,
                threads: int | None = None) -> onnxruntime.InferenceSession:
    """The float peer in ONNX Runtime: `model` exported to `path` (see `export_float_onnx`) and a CPU
    session on it with `threads` intra-op threads (None: one per core)."""
    return cpu_session(export_float_onnx(model, example, path), threads)


def _calibration_reader(input_name: str, calibration: torch.Tensor) -> Any:
    """An onnxruntime CalibrationDataReader that hands `calibration` over in CALIBRATION_CHUNK pieces."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{input_name: chunk.numpy()} for chunk in _chunks(calibration)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return BatchReader()


def quantize_ort_int8(float_onnx_path: str | Path, calibration: torch.Tensor, path: str | Path,
                      pre_process: bool = True) -> Path:
    """ONNX Runtime's own static int8 quantization of a float graph, written to `path`.

    QDQ format (QuantizeLinear/DequantizeLinear pairs around each op, which ORT's graph optimizer fuses
    into QLinearConv & co. when it builds a session), weights int8 symmetric per output channel,
    activations uint8 asymmetric per tensor with MinMax ranges from `calibration`: ORT's documented
    recommendation for x86 CPUs. `pre_process=False` skips ORT's `quant_pre_process`, whose symbolic
    shape inference fails on a transformer's reshapes (ORT then quantizes the graph as exported)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # quant_pre_process: symbolic shape inference, then ORT's basic graph optimizations (constant
        # folding, Conv+BN / redundant-node fusion), then ONNX shape inference again, so that the
        # quantizer sees every tensor's shape and quantizes the fused graph ORT will actually run
        if pre_process:
            quant_pre_process(str(float_onnx_path), str(prepared))
        else:
            prepared = Path(float_onnx_path)
        session_input = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        quantize_static(str(prepared), str(path), _calibration_reader(session_input, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(path)


def ort_int8_peer(float_onnx_path: str | Path, calibration: torch.Tensor, path: str | Path,
                  threads: int | None = None, pre_process: bool = True) -> onnxruntime.InferenceSession:
    """The int8 peer in ONNX Runtime: `quantize_ort_int8` of the float graph, at `path`, in a CPU session."""
    return cpu_session(quantize_ort_int8(float_onnx_path, calibration, path, pre_process), threads)


# ---------------------------------------------------------------------------------------------- ExecuTorch


def float32_edge(model: nn.Module, example: torch.Tensor, max_batch: int | None = MAX_BATCH) -> EdgeProgramManager:
    """The float model lowered to XNNPACK, before serialization (see `delegated_op_counts`)."""
    with torch.no_grad():
        return lower_xnnpack(export_program(_require_eval(model), example, max_batch))


def int8_peer_edge(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                   max_batch: int | None = MAX_BATCH) -> EdgeProgramManager:
    """ExecuTorch's own int8 post-training quantization of the float model, lowered to XNNPACK.

    The PT2E flow: the exported graph is annotated by the XNNPACK quantizer (weights int8 symmetric per
    output channel, activations int8 per tensor), observed on `calibration`, converted to
    quantize/dequantize pairs, exported again and lowered, where XNNPACK fuses each pair with its op into
    an integer kernel."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        # the observed graph takes any batch up to the calibration chunk's, whatever the program's batch is
        calibration_batch = max(CALIBRATION_CHUNK, example.shape[0], max_batch or 0)
        prepared = prepare_pt2e(export_program(_require_eval(model), example, calibration_batch).module(), quantizer)
        for chunk in _chunks(calibration):
            prepared(chunk)
        converted = convert_pt2e(prepared)
        return lower_xnnpack(export_program(converted, example, max_batch))


def pte_float32(model: nn.Module, example: torch.Tensor, max_batch: int | None = MAX_BATCH) -> bytes:
    """The float peer in ExecuTorch: a .pte program whose graph XNNPACK runs (float32 kernels).

    The batch dimension is dynamic in [1, max_batch] (memory is planned for max_batch); max_batch=None
    fixes every dimension at `example`'s shape."""
    return to_pte(float32_edge(model, example, max_batch))


def pte_int8_peer(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                  max_batch: int | None = MAX_BATCH) -> bytes:
    """The int8 peer in ExecuTorch: `int8_peer_edge` serialized to a .pte program; batch as in `pte_float32`."""
    return to_pte(int8_peer_edge(model, example, calibration, max_batch))


class PteRunner:
    """An ExecuTorch program loaded once, its methods loaded on first use and kept, so a `run` is one
    execute and no reload.

    Threads: XNNPACK runs on ExecuTorch's process-wide thread pool (see `set_pte_threads`)."""

    def __init__(self, program: bytes | str | Path) -> None:
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(program if isinstance(program, bytes) else Path(program))
        self._methods: dict[str, Any] = {}

    @property
    def method_names(self) -> set[str]:
        return set(self.program.method_names)

    def method(self, name: str = "forward") -> Any:
        """The loaded method `name` (loaded on the first call, the same object after)."""
        if name not in self._methods:
            if name not in self.program.method_names:
                raise KeyError(f"program has no method {name!r}; it has {sorted(self.program.method_names)}")
            self._methods[name] = self.program.load_method(name)
        return self._methods[name]

    def run(self, x: torch.Tensor, method: str = "forward") -> torch.Tensor:
        """The first output of `method` on the float tensor `x` (made contiguous: the program reads NCHW)."""
        return self.method(method).execute([x.detach().float().contiguous()])[0]


def set_pte_threads(threads: int) -> None:
    """Resize ExecuTorch's thread pool, which every loaded program shares (a process-wide setting,
    experimental in ExecuTorch: call it before timing, not while a method runs)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)
