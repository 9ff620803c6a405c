"""The trained ViT deployed through torch.export (graph=qdq): accuracy in each runtime, and latency against
each runtime's float32 model and its own int8 quantizer of it.

    python -m benchmarks.deploy.vit_deploy --checkpoint RUN/joint/best_model.pt --float-checkpoint RUN/vit_tiny_fp/best_model.pt \\
        [--rounds 30] [--out FILE]

Accuracy: the joint {8,6,5,4} ViT (apps/fashion_mnist/q_vit_tiny_adabits.yml) on the 10,000 test images
at every bit-width: the PyTorch model, its ONNX folder (ONNX Runtime) and its .pte (ExecuTorch/XNNPACK),
top-1 and agreement with the PyTorch model. Latency, in one process, rounds interleaved, medians at
batch 1 and 64: ours at 8 and 4 bits; the float ViT (`--float-checkpoint`, the stage-1 model) in each
runtime (`benchmarks/deploy/runtime_peers.py`); each runtime's own int8 post-training quantization of that
float ViT (ONNX Runtime's `quantize_static`, ExecuTorch's XNNPACKQuantizer PT2E flow), calibrated on
256 training images, with its top-1 (ONNX Runtime's without its `quant_pre_process`, which fails on
the ViT's reshapes).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import adabits
from adabits.export.onnx_integer import write_onnx_folder
from adabits.export.onnx_session import optimized_op_counts
from adabits.export.pte import export_pte
from adabits.export.qdq import qdq_model
from adabits.runtime import load

from ..common import exit_on_bad_input, full_command, report, time_interleaved
from . import runtime_peers
from .deploy_integer import batched_logits, load_test_images

CONFIG = "apps/fashion_mnist/q_vit_tiny_adabits.yml"
FLOAT_CONFIG = "apps/fashion_mnist/vit_tiny_fp.yml"
LATENCY_BITS = [8, 4]
BATCHES = [1, 64]
CALIBRATION = 256


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _trained(config: str, checkpoint: str) -> Any:
    from adabits.engine import load_config, load_trained

    cfg = load_config([f"app:{config}", f"pretrained_file={checkpoint}"]).config
    return cfg, load_trained(cfg)


def _top1(logits: Any, labels: torch.Tensor) -> float:
    return round(float((torch.as_tensor(np.asarray(logits)).argmax(1) == labels).float().mean() * 100), 2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy.vit_deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the joint ViT's best_model.pt")
    parser.add_argument("--float-checkpoint", required=True, help="the float ViT's best_model.pt (the peers' start)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args()
    from adabits.engine.deploy import calibration_images

    cfg, trained = _trained(CONFIG, args.checkpoint)
    _, float_trained = _trained(FLOAT_CONFIG, args.float_checkpoint)
    model, float_model = trained.model.eval(), float_trained.model.eval()
    shape = (trained.shape.in_chans, trained.shape.image_size, trained.shape.image_size)
    images, labels = load_test_images(cfg)
    uint8 = not cfg.normalize
    work = Path(tempfile.mkdtemp(prefix="adabits_vit_deploy_"))
    onnx_models = [qdq_model(model, b, shape, uint8_input=uint8) for b in trained.bits_list]
    pte_models = [qdq_model(model, b, shape, uint8_input=uint8, int8_weights=False) for b in trained.bits_list]
    ours = {"onnx": load(write_onnx_folder(onnx_models, work / "onnx")),
            "pte": load(export_pte(pte_models, work / "vit.pte", max_batch=500))}
    accuracy: dict[str, Any] = {}
    for bits in trained.bits_list:
        with adabits.use_bits(model, bits), torch.no_grad():
            reference = batched_logits(model, images)
        row: dict[str, Any] = {"pytorch_top1": _top1(reference, labels)}
        for name, runtime in ours.items():
            out = batched_logits(lambda x, r=runtime, b=bits: r.run(x, bits=b), images)
            row[f"{name}_top1"] = _top1(out, labels)
            row[f"{name}_agreement_with_pytorch"] = round(float((out.argmax(1) == reference.argmax(1)).float().mean() * 100), 2)
        accuracy[str(bits)] = row
        _log(f"{bits}: {row}")
    fused = optimized_op_counts(work / "onnx" / "model_4bit.onnx")

    calibration = calibration_images(cfg, CALIBRATION).float()
    example = images[:2].contiguous()
    float_onnx = work / "float.onnx"

    def peer_logits(name: str, x: torch.Tensor) -> np.ndarray:
        peer = peers[name]
        if name.startswith("pte"):
            return peer.run(x.contiguous()).numpy()
        return peer.run(None, {peer.get_inputs()[0].name: x.numpy()})[0]

    builders = {
        "ort_float32": lambda: runtime_peers.ort_float32(float_model, example, float_onnx),
        # ORT's quant_pre_process fails on the ViT's reshapes (symbolic shape inference): quantized as exported
        "ort_int8_peer": lambda: runtime_peers.ort_int8_peer(float_onnx, calibration, work / "int8.onnx",
                                                             pre_process=False),
        "pte_float32": lambda: runtime_peers.PteRunner(runtime_peers.pte_float32(float_model, example, max_batch=64)),
        "pte_int8_peer": lambda: runtime_peers.PteRunner(runtime_peers.pte_int8_peer(float_model, example,
                                                                                     calibration, max_batch=64)),
    }
    peers: dict[str, Any] = {}
    peer_errors: dict[str, str] = {}
    for name, build in builders.items():
        try:
            peers[name] = build()
            peer_logits(name, example)
        except Exception as exc:  # a peer that cannot take this model is a result, recorded with its error
            peers.pop(name, None)
            peer_errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            _log(f"{name} failed: {peer_errors[name]}")

    with torch.no_grad():
        float_top1 = _top1(batched_logits(float_model, images), labels)
    peer_top1 = {name: _top1(batched_logits(lambda x, n=name: peer_logits(n, x), images, batch=64), labels)
                 for name in peers}
    latency: dict[str, Any] = {}
    for batch in BATCHES:
        x = images[:batch].contiguous()
        variants = {**{name: (lambda n=name, x=x: peer_logits(n, x)) for name in peers},
                    **{f"{fmt}_ours_{b}": (lambda r=runtime, b=b, x=x: r.run(x, bits=b))
                       for fmt, runtime in ours.items() for b in LATENCY_BITS}}
        for run in variants.values():
            run()  # warm
        times = time_interleaved(variants, args.rounds)
        ms = {name: round(statistics.median(t) * 1000, 3) for name, t in times.items()}
        ratios = {f"{fmt}_ours_{b}_speedup_over_{peer}": round(ms[f"{'ort' if fmt == 'onnx' else 'pte'}_{peer}"]
                                                               / ms[f"{fmt}_ours_{b}"], 2)
                  for fmt in ours for b in LATENCY_BITS for peer in ("float32", "int8_peer")
                  if f"{'ort' if fmt == 'onnx' else 'pte'}_{peer}" in ms}
        latency[str(batch)] = {"median_ms": ms, "ratios": ratios}
        _log(f"batch {batch}: {latency[str(batch)]}")
    report({"command": full_command("deploy.vit_deploy", args), "test_images": len(images), "accuracy": accuracy,
            "onnx_4bit_ops_after_ort_optimization": dict(fused), "float_top1": float_top1,
            "peer_top1": peer_top1, "peer_errors": peer_errors, "latency": latency, "rounds": args.rounds}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.vit_deploy"):
        main()
