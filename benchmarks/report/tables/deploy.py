"""Tables of the deployment benchmarks (benchmarks/deploy/)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..markdown import table
from ..table import Table, fmt

R = "benchmarks/results/deploy/"

MODELS = {"resnet20_1x28x28": "ResNet-20 1x28x28", "mobilenet_v2_3x224x224": "MobileNet V2 3x224x224"}
#: the ONNX Runtime variants of deploy_latency.json, as the docs name them
LATENCY = {"ort_int8_8bit": "all-integer graph, 8 bits", "ort_int8_4bit": "all-integer graph, 4 bits",
           "ort_qdq_4bit": "`graph=qdq`, 4 bits"}


def _latency(files: Sequence[dict[str, Any]]) -> str:
    """Speed-up over ONNX Runtime float32, in brackets over PyTorch eager float32."""
    rows = []
    for model, label in MODELS.items():
        for batch in (1, 64):
            part = files[0]["latency"][model][f"batch_{batch}"]
            rows.append([f"{label}, batch {batch}", *(
                f"{fmt(part['speedup_vs_ort_float32'][key], 2, 'x')} ({fmt(part['speedup_vs_pytorch_eager_float32'][key], 1, 'x')})"
                for key in LATENCY)])
    return table(["model, batch", *LATENCY.values()], rows)


def _accuracy(files: Sequence[dict[str, Any]]) -> str:
    """PyTorch fake-quant against ONNX Runtime, per bit-width."""
    rows = [[bits, fmt(r["top1_pytorch"]), fmt(r["top1_onnx"]), fmt(r["top1_agreement"], 2, "%"),
             fmt(r["max_abs_logit_diff"])] for bits, r in files[0]["accuracy_pytorch_vs_onnx"].items()]
    return table(["bits", "PyTorch top-1", "ONNX Runtime top-1", "top-1 agreement", "max abs logit difference"], rows)


def _calibration(files: Sequence[dict[str, Any]]) -> str:
    """Top-1 at trained and calibrated bit-widths, highest first."""
    part = files[0]["calibration"]
    bits = sorted(part["top1"], key=int, reverse=True)
    header = [f"{b} (calibrated)" if int(b) in part["calibrated"] else b for b in bits]
    return table(["bits", *header], [["top-1 (%)", *(fmt(part["top1"][b]) for b in bits)]])


def _packed(files: Sequence[dict[str, Any]]) -> str:
    """The packed file's size against the float32 state dict."""
    size = files[0]["packed_size"]
    return table(["", "bytes"], [["packed safetensors file", f"{size['packed_bytes']:,}"],
                                 ["float32 state dict (torch.save)", f"{size['float32_state_dict_bytes']:,}"],
                                 ["8/32 of the float32 state dict", f"{size['float32_x_8_over_32_bytes']:,}"]])



#: runtimes of deploy_integer_latency.json: their key prefix in the file, their name in the docs
RUNTIMES = {"xnnpack": "ExecuTorch/XNNPACK", "ort": "ONNX Runtime"}


def _integer_latency(files: Sequence[dict[str, Any]]) -> str:
    """Our all-integer programs against float32 and the runtime's own int8, per model, batch and runtime."""
    rows = []
    for arch, part in files[0]["latency"].items():
        for batch, result in part["batches"].items():
            ms, ratio = result["median_ms"], result["ratios"]
            for key, runtime in RUNTIMES.items():
                bits = (8, 6, 4)
                rows.append([f"{arch}, {batch}", runtime, fmt(ms[f"{key}_float32"]),
                             f"{fmt(ms[f'{key}_int8_peer'])} ({fmt(ratio[f'{key}_peer_int8_speedup_vs_float32'], 2, 'x')})",
                             " / ".join(fmt(ms[f"{key}_ours_{b}"]) for b in bits),
                             " / ".join(fmt(ratio[f"{key}_{b}bit_speedup_vs_float32"], 2, "x") for b in bits),
                             " / ".join(fmt(ratio[f"{key}_{b}bit_speed_vs_peer_int8"], 2, "x") for b in bits)])
    return table(["model, batch", "runtime", "float32 ms", "its own int8 ms (vs float32)", "ours at 8 / 6 / 4 bits, ms",
                  "ours vs float32", "ours vs its own int8"], rows)


def _onnx_agreement(files: Sequence[dict[str, Any]]) -> str:
    """ONNX Runtime against PyTorch on a trained run, per graph form and bit-width."""
    rows = []
    for graph, per_bits in files[0]["results"].items():
        label = f"`{graph}` (default)" if graph == "integer" else f"`{graph}`"
        for bits, r in per_bits.items():
            rows.append([label, bits, fmt(r["top1_pytorch"]), fmt(r["top1_onnx"]), fmt(r["top1_agreement"], 2, "%"),
                         fmt(r["max_abs_logit_diff"]),
                         f"{r['ort_integer_ops'].get('QLinearConv', 0)} / {r['ort_float_convs']}"])
    return table(["`graph=`", "bits", "PyTorch top-1", "ONNX Runtime top-1", "top-1 agreement", "largest logit difference",
                  "QLinearConv / float convs"], rows)


def _integer_accuracy(files: Sequence[dict[str, Any]]) -> str:
    """The all-integer programs' top-1 and agreement with the trained model, per bit-width."""
    rows = []
    for bits, r in files[0]["accuracy"]["bits"].items():
        def pair(pte: str, onnx: str, r: dict[str, Any] = r) -> str:
            return f"{fmt(r[pte])} / {fmt(r[onnx], 2, '%')}"
        rows.append([bits, fmt(r["fake_quant_top1"], 2, "%"), fmt(r["pte_top1"], 2, "%"), fmt(r["onnx_top1"], 2, "%"),
                     pair("pte_agreement_with_fake_quant", "onnx_agreement_with_fake_quant"),
                     pair("pte_graph_pytorch_agreement_with_fake_quant", "onnx_graph_pytorch_agreement_with_fake_quant"),
                     pair("pte_agreement_with_its_graph", "onnx_agreement_with_its_graph")])
    return table(["bits", "model top-1", ".pte (XNNPACK)", "ONNX Runtime", "agreement with the model: .pte / ONNX",
                  "their PyTorch graphs: agreement with the model", "runtime vs its PyTorch graph: .pte / ONNX"], rows)


#: the runtime's own quantizers of the decoder benchmark, per runtime: (8-bit, 4-bit) names in the file
DECODER_PEERS = {"ort": ("ort_runtime_8bit_level{level}", "ort_runtime_4bit_level{level}"), "ov": ("ov_own_int8", "ov_own_int4"),
                 "xnnpack": ("xnnpack_own_int8", "xnnpack_own_int4")}
DECODER_RUNTIMES = {"ort": "ONNX Runtime", "ov": "OpenVINO", "xnnpack": "ExecuTorch/XNNPACK"}


def _decoder_latency(files: Sequence[dict[str, Any]]) -> str:
    """Batch-1 decoder latency per token count, runtime, weight scheme and accuracy level: ours at 8 / 4 / 2
    bits against the runtime's float32 and its own 8- and 4-bit weight quantizers (ratios: theirs over ours)."""
    result = files[0]
    schemes = result["schemes"]
    rows = []
    for tokens, part in result["latency"].items():
        ms = part["median_ms"]
        for runtime, label in DECODER_RUNTIMES.items():
            for scheme in schemes:
                for level in (0, 4):
                    ours = [ms.get(f"{runtime}_ours_{scheme}_{b}bit_level{level}") for b in (8, 4, 2)]
                    if not any(ours):  # a runtime timed at some token counts or levels only
                        continue
                    peer8, peer4 = (ms.get(name.format(level=level)) for name in DECODER_PEERS[runtime])
                    rows.append([tokens, label, scheme, str(level), fmt(ms.get(f"{runtime}_float32")), fmt(peer8),
                                 fmt(peer4), " / ".join(fmt(v) for v in ours), _ratio(ours[0], ours[1]),
                                 _ratio(peer4, ours[1]), _ratio(peer8, ours[0])])
    return table(["tokens", "runtime", "weights", "level", "float32 ms", "own 8-bit ms", "own 4-bit ms",
                  "ours 8 / 4 / 2 bits, ms", "ours 4-bit vs ours 8-bit", "ours 4-bit vs own 4-bit",
                  "ours 8-bit vs own 8-bit"], rows)


def _ratio(other: float | None, mine: float | None) -> str:
    return "n/a" if other is None or mine is None else fmt(other / mine, 2, "x")


def _decoder_files(files: Sequence[dict[str, Any]]) -> str:
    """Each file's size and how far its output is from its reference (ours: the PyTorch model at that
    bit-width; the runtime's own: the float32 model) in each runtime that ran it; a `.pte` of ours holds a
    method per bit-width, a row each."""
    result = files[0]
    agreement = result["agreement"]

    def diff(key: str) -> str:
        return "n/a" if key not in agreement else fmt(agreement[key]["max_abs_difference"], 3)

    rows = []
    for name, size in result["file_bytes"].items():
        if name.endswith(".pte"):
            stem = name.removesuffix(".pte")
            for key in (k for k in agreement if k == stem or k.startswith(stem + "_")):
                rows.append([f"`{name}` ({'forward' if key == stem else key.removeprefix(stem + '_')})", f"{size / 1e6:.1f}", "n/a",
                             "n/a", diff(key), fmt(agreement[key]["reference_max_abs"], 2)])
            continue
        reference = agreement.get(f"ort_{name}", {}).get("reference_max_abs")
        rows.append([f"`{name}`", f"{size / 1e6:.1f}", diff(f"ort_{name}"), diff(f"ov_{name}"), "n/a", fmt(reference, 2)])
    return table(["file", "MB", "largest output difference, ONNX Runtime (16 tokens)", "OpenVINO (16 tokens)",
                  "ExecuTorch/XNNPACK (1 token)", "largest reference output"], rows)


def _range(values: Sequence[float]) -> str:
    low, high = fmt(min(values), 2, "x"), fmt(max(values), 2, "x")
    return low if low == high else f"{low}-{high}"


def _shared_weights(files: Sequence[dict[str, Any]]) -> str:
    """Per model: the folder's bytes with one copy of the codes against a copy per file and one 8-bit file,
    and the latency of the one-copy files over the own-copy ones (range over bit-widths) per runtime and batch."""
    result = files[0]
    rows = []
    for model, part in result["models"].items():
        sizes = part["bytes"]
        speed = "; ".join(f"{key.replace('_batch_', ', batch ')}: {_range(list(ratios.values()))}"
                          for key, ratios in part["shared_over_own_latency"].items())
        rows.append([model, f"{sizes['own'] / 1e6:.2f}", f"{sizes['shared'] / 1e6:.2f}",
                     fmt(part["shared_over_own"], 2, "x"), f"{sizes['own_8bit_file'] / 1e6:.2f}",
                     fmt(part["shared_over_one_int8_file"], 2, "x"), speed,
                     "; ".join(f"{runtime}: {fmt(t['shared'], 2)} s / {fmt(t['own'], 2)} s"
                               for runtime, t in part["load_s"].items())])
    return table(["model, bits {8,6,5,4}", "MB, a copy per file", "MB, one copy", "one copy / a copy per file",
                  "MB, our 8-bit file alone", "one copy / the 8-bit file (goal <= 1.25x)",
                  "latency, one copy / a copy per file", "load, one copy / a copy per file"], rows)


def _tradeoff(files: Sequence[dict[str, Any]]) -> str:
    """Per bit-width: top-1 and latency in each runtime, bits per weight."""
    rows = files[0]["rows"]
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    cells = {(r["runtime"], r["bits"]): r for r in rows}
    body = []
    for bits in dict.fromkeys(r["bits"] for r in rows):
        mine = [cells.get((runtime, bits)) for runtime in runtimes]
        body.append([bits, *(f"{fmt(100 * r['top1'], 2, '%')}, {fmt(r['latency_ms'], 2)} ms" if r else "n/a" for r in mine),
                     fmt(next(r["weight_bits"] for r in mine if r), 2)])
    return table(["bits", *(f"{runtime}: top-1, latency" for runtime in runtimes), "bits per weight"], body)


TABLES = {
    "deploy_latency": Table((R + "deploy_latency.json",), _latency),
    "deploy_accuracy": Table((R + "deploy_accuracy.json",), _accuracy),
    "deploy_calibration": Table((R + "deploy_calibration.json",), _calibration),
    "deploy_packed": Table((R + "deploy_accuracy.json",), _packed),
    "deploy_integer_latency": Table((R + "deploy_integer_latency.json",), _integer_latency),
    "deploy_integer_accuracy": Table((R + "deploy_integer_accuracy.json",), _integer_accuracy),
    "onnx_agreement": Table((R + "onnx_agreement_main_job_lr0.005.json",), _onnx_agreement),
    "decoder_nbits_latency": Table((R + "decoder_nbits.json",), _decoder_latency),
    "decoder_nbits_files": Table((R + "decoder_nbits.json",), _decoder_files),
    "shared_weights": Table((R + "shared_weights.json",), _shared_weights),
    "tradeoff_main_job": Table((R + "tradeoff_main_job.json",), _tradeoff),
}
