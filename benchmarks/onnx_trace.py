"""Where an ONNX export departs from the PyTorch model: per-layer input codes that differ, per bias mode.

For a trained run and one bit-width it measures
- how sensitive the model itself is to float rounding: top-1 agreement of PyTorch in float64 with
  PyTorch in float32;
- for each `bias` mode of the export, the top-1 agreement of ONNX Runtime with PyTorch, and for
  every quantized layer the share of its uint8 input codes that differ from the codes PyTorch
  rounds to (read from the graph's QuantizeLinear/Clip outputs), with the share of images that
  have any difference there. The first layer where codes differ is where the export departs.

    python -m benchmarks.onnx_trace app:apps/fashion_mnist/q_resnet20_adabits.yml log_dir=/tmp/me/mj \
        fp_pretrained_file=/tmp/me/mj/resnet20_fp/best_model.pt --bits 6 --images 1000 \
        --out benchmarks/results/onnx_trace_main_job_6bit.json
"""
from __future__ import annotations

import argparse
import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import adabits
from adabits.engine import load_config
from adabits.export.onnx import BIAS_MODES, export_onnx
from adabits.export.onnx_session import cpu_session
from adabits.quant import QuantLayer

from ._results import BadInput, command, exit_on_bad_input, report
from .deploy import load_for_evaluation


def pytorch_codes(model: torch.nn.Module, bits: int, images: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits, and every quantized layer's input codes, rounded by its scheme from x / input_scale."""
    codes: dict[str, np.ndarray] = {}

    def hook(name: str):
        def record(layer: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            assert isinstance(layer, QuantLayer)
            if not layer.quantizes_input:
                return
            units = inputs[0] / layer.input_scale()  # as QuantizeLinear divides by its scale
            codes[name] = layer.act_scheme.codes_from_units(units, layer.act_bits).to(torch.uint8).numpy()
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    try:
        with torch.no_grad(), adabits.use_bits(model, bits):
            logits = model(images.float()).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return logits, codes


def onnx_codes(path: Path, images: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits of the export and, per quantized layer, the uint8 codes its input is rounded to."""
    import onnx

    proto = onnx.load(str(path))
    taps: dict[str, str] = {}  # layer name -> tensor holding its (clipped) codes
    for node in proto.graph.node:
        match = re.fullmatch(r"(.+)_x_(q|clip)_\d+", node.output[0])
        if node.op_type in ("QuantizeLinear", "Clip") and match:
            taps[match.group(1)] = node.output[0]  # the Clip, when there is one, comes after the Q
    for tensor in taps.values():
        proto.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.UINT8, None))
    session = cpu_session(proto.SerializeToString())
    outputs = session.run(["logits", *taps.values()], {"input": images.to(torch.uint8).numpy()})
    return outputs[0], dict(zip(taps, outputs[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_trace", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="+", help="app:PATH.yml [key=value ...], as for `adabits test`")
    parser.add_argument("--bits", type=int, required=True)
    parser.add_argument("--images", type=int, default=1000, help="first N test images")
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    cfg = load_config(opts.config).config
    if cfg.normalize:
        raise BadInput("reads raw uint8 images, so the run must use normalize: false")
    loaded = load_for_evaluation(cfg)
    model = loaded.model.eval()
    images = loaded.val.images[:opts.images]
    expected, torch_codes = pytorch_codes(model, opts.bits, images)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad(), adabits.use_bits(model64, opts.bits):
        logits64 = model64(images.double()).numpy()
    result: dict[str, Any] = {
        "command": command("onnx_trace"), "bits": opts.bits,
        "images": len(images),
        "top1_agreement_pytorch_float64_vs_float32": round(100 * float((logits64.argmax(1) == expected.argmax(1)).mean()), 2),
        "bias_modes": {},
    }
    shape = loaded.shape
    with tempfile.TemporaryDirectory() as tmp:
        for bias in BIAS_MODES:
            path = export_onnx(model, Path(tmp) / f"{bias}.onnx", opts.bits,
                               (shape.in_chans, shape.image_size, shape.image_size), bias=bias)
            got, graph_codes = onnx_codes(path, images)
            layers = {}
            for name, codes in torch_codes.items():
                differ = codes != graph_codes[name.replace(".", "_")].reshape(codes.shape)
                layers[name] = {"codes_differ_pct": round(100 * float(differ.mean()), 4),
                                "images_with_any_pct": round(100 * float(differ.reshape(len(images), -1).any(1).mean()), 1)}
            result["bias_modes"][bias] = {
                "top1_agreement": round(100 * float((got.argmax(1) == expected.argmax(1)).mean()), 2),
                "layers": layers}
    report(result, opts.out)


if __name__ == "__main__":
    with exit_on_bad_input("onnx_trace"):
        main()
