"""Sub-8-bit linear layers where they pay: a weight-bound decoder step in ONNX Runtime, OpenVINO and XNNPACK.

At batch 1 and a few tokens, a decoder's time goes into reading its linear layers' weights, so a 4-bit
weight (half an int8 weight's bytes) can pay where no convolution kernel below int8 exists. The model is
a stack of pre-norm decoder blocks (causal self-attention and a 4x MLP, plain `nn.Linear`s) of at least
50M parameters (by default 100M: its 4-bit weights, 50 MB, do not fit a 32 MB L3 cache) with random
weights, converted by `adabits.quantize_model` with bits [8, 4, 2] and calibrated on random hidden states,
once per weight scheme (`centered`, `QuantConfig.pretrained()`'s, whose half-code zero point adds a row
sum per layer; `modified`, whose codes the kernel takes as they are). In one process, rounds interleaved,
medians, every ONNX file in ONNX Runtime and, where installed, OpenVINO:

- ours: the ONNX export of each bit-width (`qdq_model` + `export_qdq_onnx`, what `adabits export
  --format onnx` writes), at accuracy level 0 (float32 compute, exact: `MatMulNBits` at 4 and 2 bits, a
  quantize/dequantize linear at 8) and 4 (int8 compute: `MatMulNBits` at every bit-width);
- ONNX Runtime's own: the float32 model, `quantize_dynamic` (int8 weights per channel, activations
  quantized at run time), and `MatMulNBitsQuantizer` at 8 and 4 bits (block 32, symmetric, level 0 and 4);
- OpenVINO's own: the float32 model and NNCF's `compress_weights` of it (int8 per channel, int4 symmetric
  per block of 32; `pip install nncf`, else left out and noted).

    python -m benchmarks.deploy.decoder_nbits [--width 1024] [--blocks 8] [--tokens 1 16] [--schemes centered modified]
        [--rounds 30] [--out FILE]
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
from adabits.runtime import openvino_config

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


def build(width: int, blocks: int, heads: int, schemes: list[str],
          work: Path) -> tuple[dict[str, Path], nn.Module, dict[str, nn.Module], dict[str, Any]]:
    """Every variant's ONNX file, the float model, ours per weight scheme and a description of the workload."""
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
    models = {}
    for scheme in schemes:
        config = adabits.QuantConfig.pretrained(weight_quant_scheme=scheme)
        model = adabits.quantize_model(copy.deepcopy(float_model), BITS, config, first_last_policy=False,
                                       calibration=calibration)
        models[scheme] = model.eval()
        for level in ACCURACY_LEVELS:
            for bits in BITS:
                name = f"ours_{scheme}_{bits}bit_level{level}"
                qdq = qdq_model(model, bits, (8, width), uint8_input=False, nbits_linear=True, accuracy_level=level)
                files[name] = export_qdq_onnx(qdq, work / f"{name}.onnx", dynamic=("tokens",))
                _log(f"exported {name}")
    workload = {"width": width, "blocks": blocks, "heads": heads, "parameters": parameters,
                "linear_parameters": sum(m.weight.numel() for m in float_model.modules() if isinstance(m, nn.Linear))}
    return files, float_model, models, workload


def speedups(ms: dict[str, float], schemes: list[str]) -> dict[str, float]:
    """Each comparison the goals name, per runtime and accuracy level, as the other's median over ours (> 1: ours
    is faster): our 4-bit against our 8-bit and the runtime's own 4-bit, our 8-bit against the runtime's own
    8-bit, our 2-bit against our 4-bit, each of ours against the runtime's float32."""
    own = {"ort": {8: ["ort_runtime_dynamic_int8", "ort_runtime_8bit_level{level}"], 4: ["ort_runtime_4bit_level{level}"]},
           "ov": {8: ["ov_own_int8"], 4: ["ov_own_int4"]}, "xnnpack": {8: ["xnnpack_own_int8"], 4: ["xnnpack_own_int4"]}}
    pairs = {}
    for runtime, peers in own.items():
        for scheme in schemes:
            for level in ACCURACY_LEVELS:
                ours = {b: f"{runtime}_ours_{scheme}_{b}bit_level{level}" for b in BITS}
                key = f"{runtime}_{scheme}_level{level}"
                pairs[f"{key}_ours_4bit_vs_ours_8bit"] = (ours[4], ours[8])
                pairs[f"{key}_ours_2bit_vs_ours_4bit"] = (ours[2], ours[4])
                for bits, names in peers.items():
                    for peer in names:
                        peer = peer.format(level=level)
                        pairs[f"{key}_ours_{bits}bit_vs_{peer}"] = (ours[bits], peer)
                pairs.update({f"{key}_ours_{b}bit_vs_float32": (ours[b], f"{runtime}_float32") for b in BITS})
    return {name: round(ms[other] / ms[first], 2) for name, (first, other) in pairs.items() if first in ms and other in ms}


def _ort_runners(files: dict[str, Path], threads: int | None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: session.run(None, {"input": x})[0]

    return {f"ort_{name}": runner(cpu_session(path, threads)) for name, path in files.items()}


def _openvino_runners(files: dict[str, Path], float_path: Path, threads: int | None,
                      notes: dict[str, str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Our files in OpenVINO (as `adabits.runtime` configures it), its float32 model, and its own weight
    compression of that model (NNCF `compress_weights`: int8 per channel, int4 symmetric per group of
    BLOCK_SIZE) in OpenVINO's default settings; a peer that cannot be built is a note, not a row."""
    import openvino as ov

    core = ov.Core()

    def runner(model: Any, config: dict[str, str]) -> Callable[[np.ndarray], np.ndarray]:
        request = core.compile_model(model, "CPU", config).create_infer_request()
        return lambda x: np.array(request.infer([x])[0])

    default = {"INFERENCE_NUM_THREADS": str(threads)} if threads else {}
    runners = {f"ov_{name}": runner(core.read_model(str(path)), openvino_config(int(name.rsplit("level", 1)[1]), threads))
               for name, path in files.items() if name.startswith("ours")}
    runners["ov_float32"] = runner(core.read_model(str(float_path)), openvino_config(0, threads))
    try:
        import nncf
    except ImportError:
        notes["ov_own_weight_compression"] = "nncf is not installed (pip install nncf): OpenVINO's own int8/int4 rows left out"
        return runners
    modes = {"ov_own_int8": dict(mode=nncf.CompressWeightsMode.INT8_SYM),
             "ov_own_int4": dict(mode=nncf.CompressWeightsMode.INT4_SYM, group_size=BLOCK_SIZE, ratio=1.0)}
    for name, options in modes.items():
        runners[name] = runner(nncf.compress_weights(core.read_model(str(float_path)), **options), default)
    return runners


def _xnnpack_runners(float_model: nn.Module, models: dict[str, nn.Module], width: int,
                     sizes: dict[str, int]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """At one token (the programs' shapes are fixed): ours in a `.pte` per weight scheme (a method per bit-width,
    `accuracy_level=4`: XNNPACK's int4 / int8 kernels on our codes), ExecuTorch's float32 program, and torchao's
    own dynamically quantized int8 / int4 (block 32) weights of the float model, lowered to XNNPACK alike."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.utils import unwrap_tensor_subclass

    from adabits.export.pte import export_program, integer_program, lower_xnnpack, method_name, to_pte

    from .runtime_peers import PteRunner, pte_float32

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def add(name: str, program: bytes, methods: dict[str, str]) -> None:
        runner = PteRunner(program)
        sizes[f"{name}.pte"] = len(program)
        for key, method in methods.items():
            runners[key] = lambda x, r=runner, m=method: r.run(torch.from_numpy(x), m).numpy()

    example = torch.zeros(1, 1, width)
    with torch.no_grad():
        add("xnnpack_float32", pte_float32(float_model, example, max_batch=None), {"xnnpack_float32": "forward"})
        own = {"xnnpack_own_int8": Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                          weight_granularity=PerAxis(0)),
               "xnnpack_own_int4": Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                          weight_granularity=PerGroup(BLOCK_SIZE))}
        for name, config in own.items():
            peer = copy.deepcopy(float_model)
            quantize_(peer, config)
            unwrap_tensor_subclass(peer)
            add(name, to_pte(lower_xnnpack(export_program(peer, example, None))), {name: "forward"})
        for scheme, model in models.items():
            graphs = [qdq_model(model, b, (1, width), uint8_input=False, int8_weights=False, xnnpack_linear=True)
                      for b in BITS]
            add(f"xnnpack_ours_{scheme}", to_pte(integer_program(graphs, max_batch=2)),
                {f"xnnpack_ours_{scheme}_{b}bit_level4": method_name(b) for b in BITS})
            _log(f"lowered ours ({scheme}) to XNNPACK")
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy.decoder_nbits", description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--schemes", nargs="+", default=["centered", "modified"], choices=["centered", "modified"],
                        help="our weight schemes (centered: QuantConfig.pretrained()'s; its half-code zero point costs "
                             "a row sum per layer)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of each runtime (default: one per core)")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args()
    if args.width % args.heads or args.width % BLOCK_SIZE:
        raise BadInput(f"--width {args.width} must be a multiple of --heads {args.heads} and of {BLOCK_SIZE}")
    work = Path(tempfile.mkdtemp(prefix="adabits_decoder_nbits_"))
    files, float_model, models, workload = build(args.width, args.blocks, args.heads, args.schemes, work)
    notes: dict[str, str] = {}
    runners = _ort_runners(files, args.threads)
    try:
        runners.update(_openvino_runners(files, files["float32"], args.threads, notes))
    except ImportError:
        notes["openvino"] = "openvino is not installed (pip install 'adabits[openvino]'): its rows left out"
    sizes = {name: path.stat().st_size for name, path in files.items()}
    ops = {name: dict(optimized_op_counts(path)) for name, path in files.items() if name.startswith("ours")}
    one_token = _xnnpack_runners(float_model, models, args.width, sizes)

    torch.manual_seed(1)
    probe = torch.randn(1, 16, args.width)
    with torch.no_grad():
        reference = {"float32": cpu_session(files["float32"]).run(None, {"input": probe.numpy()})[0]}
        for scheme, model in models.items():
            for bits in BITS:
                with adabits.use_bits(model, bits):
                    reference[f"{scheme}_{bits}bit"] = model(probe).numpy()
    with torch.no_grad():
        reference_1 = {key: value[:, :1] for key, value in reference.items()}  # causal: the first token's outputs
    agreement = {}
    for name, run in {**runners, **one_token}.items():
        try:
            out = run(probe[:, :1].contiguous().numpy() if name in one_token else probe.numpy())
        except RuntimeError as exc:  # a kernel the runtime lacks (OpenVINO 2026.4's CPU plugin: 2-bit MatMulNBits)
            notes[name] = f"does not run: {str(exc).strip().splitlines()[-1][:200]}"
            continue
        target = next((key for key in reference if f"_ours_{key}_" in name), "float32")
        expected = (reference_1 if name in one_token else reference)[target]
        agreement[name] = {"against": "pytorch" if target != "float32" else "float32",
                           "max_abs_difference": round(float(np.abs(out - expected).max()), 5),
                           "reference_max_abs": round(float(np.abs(expected).max()), 5)}
    runners = {name: run for name, run in runners.items() if name in agreement}
    one_token = {name: run for name, run in one_token.items() if name in agreement}

    latency: dict[str, Any] = {}
    for tokens in args.tokens:
        x = np.ascontiguousarray(torch.randn(1, tokens, args.width).numpy())
        timed = {**runners, **one_token} if tokens == 1 else runners
        variants: dict[str, Callable[[], object]] = {name: (lambda r=run, x=x: r(x)) for name, run in timed.items()}
        for warm in variants.values():
            warm()
        times = time_interleaved(variants, args.rounds)
        ms = {name: round(statistics.median(t) * 1000, 3) for name, t in times.items()}
        latency[str(tokens)] = {"median_ms": ms, "speedups": speedups(ms, args.schemes)}
        _log(f"tokens {tokens}: {ms}")
    report({"command": full_command("deploy.decoder_nbits", args), "workload": workload, "schemes": args.schemes, "batch": 1,
            "onnxruntime": __import__("onnxruntime").__version__, "file_bytes": sizes, "ops_after_ort_optimization": ops,
            "agreement": agreement, "notes": notes, "latency": latency, "rounds": args.rounds}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.decoder_nbits"):
        main()
