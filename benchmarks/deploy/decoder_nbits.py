"""Sub-8-bit linear layers where they pay: a weight-bound transformer decoder step in ONNX Runtime.

At batch 1 and a few tokens, a decoder's time goes into reading its linear layers' weights, so a 4-bit
weight (half an int8 weight's bytes) can pay where no convolution kernel below int8 exists. The model is
a stack of pre-norm decoder blocks (causal self-attention and a 4x MLP, plain `nn.Linear`s) of at least
50M parameters (by default 100M: its 4-bit weights, 50 MB, do not fit a 32 MB L3 cache) with random weights, converted by `adabits.quantize_model` with bits [8, 4, 2] and
calibrated on random hidden states. In one process, rounds interleaved, medians:

- ours: the ONNX export of each bit-width (`qdq_model` + `export_qdq_onnx`, what `adabits export
  --format onnx` writes), at ONNX Runtime accuracy level 0 (float32 compute, exact: `MatMulNBits` at 4 and
  2 bits, an int8 quantize/dequantize linear at 8) and 4 (int8 compute: `MatMulNBits` at every bit-width);
- the runtime's own: the float32 model, `quantize_dynamic` (int8 weights per channel, activations
  quantized at run time), and `MatMulNBitsQuantizer` at 8 and 4 bits (block 32, symmetric, level 0 and 4).

    python -m benchmarks.deploy.decoder_nbits [--width 1024] [--blocks 8] [--tokens 1 16] [--rounds 30] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adabits
from adabits.export.onnx_session import cpu_session, optimized_op_counts
from adabits.export.qdq import export_qdq_onnx, qdq_model

from ..common import BadInput, exit_on_bad_input, full_command, report, time_interleaved

BITS = [8, 4, 2]
ACCURACY_LEVELS = (0, 4)
BLOCK_SIZE = 32
CALIBRATION_BATCHES = 4
OPSET = 17


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention and a 4x GELU MLP, every projection an `nn.Linear`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Decoder(nn.Module):
    """`blocks` decoder blocks on hidden states (batch, tokens, width); no embedding or head."""

    def __init__(self, width: int, blocks: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DecoderBlock(width, heads) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


def _export_float(model: nn.Module, example: Tensor, path: Path) -> Path:
    """The float decoder as ONNX (TorchScript exporter: linears on 3-D inputs become MatMul + Add, the
    form ONNX Runtime's weight quantizers look for), batch and tokens dynamic."""
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": axes, "logits": axes})
    return path


def _runtime_nbits(float_path: Path, bits: int, level: int, path: Path) -> Path:
    """ONNX Runtime's own weight-only quantizer (round to nearest, per block of BLOCK_SIZE, symmetric)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(float_path)), bits=bits, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=level)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    return path


def _runtime_dynamic_int8(float_path: Path, path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8, per_channel=True)
    return path


def build(width: int, blocks: int, heads: int, work: Path) -> tuple[dict[str, Path], nn.Module, dict[str, Any]]:
    """Every variant's ONNX file, the float model and a description of the workload."""
    torch.manual_seed(0)
    float_model = Decoder(width, blocks, heads).eval()
    parameters = sum(p.numel() for p in float_model.parameters())
    example = torch.randn(1, 8, width)
    files = {"float32": _export_float(float_model, example, work / "float32.onnx")}
    files["runtime_dynamic_int8"] = _runtime_dynamic_int8(files["float32"], work / "runtime_dynamic_int8.onnx")
    for bits in (8, 4):
        for level in ACCURACY_LEVELS:
            files[f"runtime_{bits}bit_level{level}"] = _runtime_nbits(files["float32"], bits, level,
                                                                    work / f"runtime_{bits}bit_level{level}.onnx")
    calibration = [torch.randn(1, 16, width) for _ in range(CALIBRATION_BATCHES)]
    model = adabits.quantize_model(copy.deepcopy(float_model), BITS, first_last_policy=False, calibration=calibration)
    model.eval()
    shape = (8, width)
    for level in ACCURACY_LEVELS:
        for bits in BITS:
            name = f"ours_{bits}bit_level{level}"
            qdq = qdq_model(model, bits, shape, uint8_input=False, nbits_linear=True, accuracy_level=level)
            files[name] = export_qdq_onnx(qdq, work / f"{name}.onnx", dynamic=("tokens",))
            _log(f"exported {name}")
    workload = {"width": width, "blocks": blocks, "heads": heads, "parameters": parameters,
                "linear_parameters": sum(m.weight.numel() for m in float_model.modules() if isinstance(m, nn.Linear))}
    return files, model, workload


def speedups(ms: dict[str, float]) -> dict[str, float]:
    """Each comparison the goals name, as the slower one's median over the faster one's (> 1: the first
    named is faster): our 4-bit against our 8-bit and the runtime's own 4-bit, our 8-bit against the runtime's
    own 8-bit quantizers, every one of ours against float32, per accuracy level."""
    pairs = {}
    for level in ACCURACY_LEVELS:
        ours = {b: f"ours_{b}bit_level{level}" for b in BITS}
        pairs[f"ours_4bit_vs_ours_8bit_level{level}"] = (ours[4], ours[8])
        pairs[f"ours_2bit_vs_ours_4bit_level{level}"] = (ours[2], ours[4])
        pairs[f"ours_4bit_vs_runtime_4bit_level{level}"] = (ours[4], f"runtime_4bit_level{level}")
        pairs[f"ours_8bit_vs_runtime_8bit_level{level}"] = (ours[8], f"runtime_8bit_level{level}")
        pairs[f"ours_8bit_level{level}_vs_runtime_dynamic_int8"] = (ours[8], "runtime_dynamic_int8")
        pairs.update({f"ours_{b}bit_level{level}_vs_float32": (ours[b], "float32") for b in BITS})
    return {name: round(ms[other] / ms[first], 2) for name, (first, other) in pairs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy.decoder_nbits", description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: one per core)")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args()
    if args.width % args.heads or args.width % BLOCK_SIZE:
        raise BadInput(f"--width {args.width} must be a multiple of --heads {args.heads} and of {BLOCK_SIZE}")
    work = Path(tempfile.mkdtemp(prefix="adabits_decoder_nbits_"))
    files, model, workload = build(args.width, args.blocks, args.heads, work)
    sessions = {name: cpu_session(path, args.threads) for name, path in files.items()}
    sizes = {name: path.stat().st_size for name, path in files.items()}
    ops = {name: dict(optimized_op_counts(path)) for name, path in files.items() if name.startswith("ours")}

    torch.manual_seed(1)
    agreement: dict[str, Any] = {}
    probe = torch.randn(1, 16, args.width)
    reference = {}
    with torch.no_grad():
        for bits in BITS:
            with adabits.use_bits(model, bits):
                reference[bits] = model(probe).numpy()
        float_out = sessions["float32"].run(None, {"input": probe.numpy()})[0]
    for name, session in sessions.items():
        out = session.run(None, {"input": probe.numpy()})[0]
        bits = next((b for b in BITS if name.startswith(f"ours_{b}bit")), None)
        target = float_out if bits is None else reference[bits]
        agreement[name] = {"max_abs_vs_" + ("float32" if bits is None else "pytorch"): float(np.abs(out - target).max()),
                           "output_max_abs": float(np.abs(target).max())}

    latency: dict[str, Any] = {}
    for tokens in args.tokens:
        x = np.ascontiguousarray(torch.randn(1, tokens, args.width).numpy())
        variants: dict[str, Callable[[], object]] = {
            name: (lambda s=session, x=x: s.run(None, {"input": x})) for name, session in sessions.items()}
        for run in variants.values():
            run()
        times = time_interleaved(variants, args.rounds)
        ms = {name: round(statistics.median(t) * 1000, 3) for name, t in times.items()}
        latency[str(tokens)] = {"median_ms": ms, "speedups": speedups(ms)}
        _log(f"tokens {tokens}: {ms}")
    report({"command": full_command("deploy.decoder_nbits", args), "workload": workload, "batch": 1,
            "onnxruntime": __import__("onnxruntime").__version__, "file_bytes": sizes, "ops_after_ort_optimization": ops,
            "agreement": agreement, "latency": latency, "rounds": args.rounds}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.decoder_nbits"):
        main()
