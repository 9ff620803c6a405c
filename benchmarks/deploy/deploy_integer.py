"""All-integer deployment: our .pte and ONNX exports against each runtime's float32 and its own int8 quantizer.

Latency (`--part latency`): ResNet-20 on 1x28x28 and MobileNet V2 on 3x224x224, random weights (BN
statistics from a few forwards on random images: latency does not depend on the values), one model
with bits [8, 6, 4]. In one process, rounds interleaved, medians, at batch 1 and 32 and `--threads`:
- ExecuTorch/XNNPACK: ours (one .pte, a method per bit-width), the float32 model, and ExecuTorch's
  own int8 flow (XNNPACKQuantizer, per-channel symmetric, PT2E) of it;
- ONNX Runtime: ours (one all-integer file per bit-width), the float32 model, and `quantize_static`
  (QDQ, per-channel, u8 activations, s8 weights) of it.
The float32 and peer int8 models are the float twin of the same network (`benchmarks/deploy/runtime_peers.py`).

Accuracy (`--part accuracy --checkpoint PATH`): the main job's trained model on the 10,000 test
images at every bit-width: the fake-quant model, its integer graph in PyTorch, the .pte and the
ONNX files: top-1 of each and their top-1 agreement with the fake-quant model. Also the size of the
one .pte against one .pte per bit-width, and the cost of switching bit-width between calls.

    python -m benchmarks.deploy.deploy_integer --part latency --out benchmarks/results/deploy/deploy_integer_latency.json
    python -m benchmarks.deploy.deploy_integer --part accuracy --checkpoint runs/q_resnet20_adabits/best_model.pt \\
        --out benchmarks/results/deploy/deploy_integer_accuracy.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import adabits
from adabits.export.int8_layer import PAIR_PRODUCT_LIMIT
from adabits.export.integer_graph import integer_graph
from adabits.export.onnx_integer import integer_op_report, write_onnx_folder
from adabits.export.pte import export_pte, integer_program, method_name
from adabits.export.pte_delegation import delegated_op_counts
from adabits.quant.float_twin import float_twin
from adabits.runtime import load

from ..common import BadInput, exit_on_bad_input, full_command, report, time_interleaved
from . import runtime_peers

ARCHS = {"resnet20": dict(model="resnet20", in_chans=1, num_classes=10, size=28),
         "mobilenet_v2": dict(model="mobilenet_v2", in_chans=3, num_classes=1000, size=224)}
LATENCY_BITS = [8, 6, 4]
CALIBRATION = 32


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _random_model(arch: str, bits: list[int]) -> tuple[nn.Module, torch.Tensor]:
    """A model of `arch` with BN statistics from random images (0..255 pixels, as `normalize: false`)."""
    spec = ARCHS[arch]
    torch.manual_seed(0)
    model = adabits.create_model(spec["model"], bits_list=bits, num_classes=spec["num_classes"],
                                 in_chans=spec["in_chans"])
    images = torch.randint(0, 256, (CALIBRATION, spec["in_chans"], spec["size"], spec["size"])).float()
    model.train()
    with torch.no_grad():
        for b in bits:
            with adabits.use_bits(model, b):
                for chunk in images.split(8):
                    model(chunk)
    return model.eval(), images


def latency(arch: str, batches: list[int], rounds: int, threads: int, workdir: Path) -> dict[str, Any]:
    spec = ARCHS[arch]
    model, calibration = _random_model(arch, LATENCY_BITS)
    shape = (spec["in_chans"], spec["size"], spec["size"])
    started = time.perf_counter()
    pte_graphs = [integer_graph(model, b, shape, calibration, pair_limit=None) for b in LATENCY_BITS]
    graphs = [integer_graph(model, b, shape, calibration) for b in LATENCY_BITS]  # as `adabits export` makes them
    ours_pte = load(export_pte(pte_graphs, workdir / f"{arch}.pte", max_batch=max(batches)))
    ours_onnx = load(write_onnx_folder(graphs, workdir / f"{arch}_onnx"), threads=threads)
    _log(f"{arch}: ours exported in {time.perf_counter() - started:.0f} s")
    twin = float_twin(model).eval()
    example = calibration[:1]
    float_onnx = workdir / f"{arch}_float.onnx"
    ort_float = runtime_peers.ort_float32(twin, example, float_onnx, threads=threads)
    ort_int8 = runtime_peers.ort_int8_peer(float_onnx, calibration, workdir / f"{arch}_ort_int8.onnx", threads=threads)
    pte_float = runtime_peers.PteRunner(runtime_peers.pte_float32(twin, example, max_batch=max(batches)))
    pte_int8 = runtime_peers.PteRunner(runtime_peers.pte_int8_peer(twin, example, calibration,
                                                                   max_batch=max(batches)))
    _log(f"{arch}: peers built after {time.perf_counter() - started:.0f} s")
    runtime_peers.set_pte_threads(threads)
    ops = {f"onnx_{b}": integer_op_report(workdir / f"{arch}_onnx" / f"model_{b}bit.onnx") for b in LATENCY_BITS}
    edge = integer_program(pte_graphs[:1], max_batch=max(batches))
    counts = delegated_op_counts(edge, method_name(LATENCY_BITS[0]))
    results: dict[str, Any] = {"ours_onnx_ops": ops, "ours_pte_all_delegated": counts.all_delegated,
                               "ours_pte_float_ops": dict(counts.float_ops), "batches": {}}
    for batch in batches:
        x = torch.randint(0, 256, (batch, *shape)).float()
        variants = _variants(x, ours_pte, ours_onnx, pte_float, pte_int8, ort_float, ort_int8)
        time_interleaved(variants, 3)  # warm-up
        times = time_interleaved(variants, rounds)
        ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
        ratios = {}
        for runtime in ("xnnpack", "ort"):
            for b in LATENCY_BITS:
                ours = ms[f"{runtime}_ours_{b}"]
                ratios[f"{runtime}_{b}bit_speedup_vs_float32"] = ms[f"{runtime}_float32"] / ours
                ratios[f"{runtime}_{b}bit_speed_vs_peer_int8"] = ms[f"{runtime}_int8_peer"] / ours
            ratios[f"{runtime}_peer_int8_speedup_vs_float32"] = ms[f"{runtime}_float32"] / ms[f"{runtime}_int8_peer"]
        results["batches"][str(batch)] = {"median_ms": ms, "ratios": ratios}
        _log(f"{arch} batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return results


def _variants(x: torch.Tensor, ours_pte: Any, ours_onnx: Any, pte_float: Any, pte_int8: Any, ort_float: Any,
              ort_int8: Any) -> dict[str, Any]:
    """One call of each model on `x`, by name (ONNX Runtime's float graphs read float32 pixels, ours uint8)."""
    xu8, xf = x.numpy().astype(np.uint8), x.numpy()
    return {
        "xnnpack_float32": lambda: pte_float.run(x),
        "xnnpack_int8_peer": lambda: pte_int8.run(x),
        **{f"xnnpack_ours_{b}": (lambda b=b: ours_pte.run(x, bits=b)) for b in LATENCY_BITS},
        "ort_float32": lambda: ort_float.run(None, {ort_float.get_inputs()[0].name: xf}),
        "ort_int8_peer": lambda: ort_int8.run(None, {ort_int8.get_inputs()[0].name: xf}),
        **{f"ort_ours_{b}": (lambda b=b: ours_onnx.run(xu8, bits=b)) for b in LATENCY_BITS},
    }


def load_test_images(cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from adabits.data import build_loader

    loader, _ = build_loader(cfg, "val", torch.device("cpu"))
    images, labels = zip(*[(x, y) for x, y in loader])
    return torch.cat(images).float(), torch.cat(labels)


def batched_logits(fn: Any, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(fn(images[i:i + batch]))) for i in range(0, len(images), batch)])


def accuracy(checkpoint: str, config: str, overrides: list[str], calibration_images: int,
             workdir: Path) -> dict[str, Any]:
    from adabits.engine import load_config, load_trained
    from adabits.engine.deploy import calibration_images as training_images

    cfg = load_config([f"app:{config}", *overrides, f"pretrained_file={checkpoint}"]).config
    trained = load_trained(cfg)
    model = trained.model.eval()
    shape = trained.shape
    input_shape = (shape.in_chans, shape.image_size, shape.image_size)
    images, labels = load_test_images(cfg)
    calibration = training_images(cfg, calibration_images)
    bits_list = trained.bits_list
    def graphs_for(pair_limit: int | None) -> list[Any]:
        return [integer_graph(model, b, input_shape, calibration, uint8_input=not cfg.normalize, pair_limit=pair_limit)
                for b in bits_list]

    graphs = {"pte": graphs_for(None), "onnx": graphs_for(PAIR_PRODUCT_LIMIT)}  # as `adabits export` makes them
    pte = export_pte(graphs["pte"], workdir / "model.pte", max_batch=500)
    single = [export_pte([g], workdir / f"model_{g.bits}.pte", max_batch=500).stat().st_size for g in graphs["pte"]]
    folder = write_onnx_folder(graphs["onnx"], workdir / "onnx")
    runtimes = {"pte": load(pte), "onnx": load(folder)}
    rows: dict[str, Any] = {}
    for index, bits in enumerate(bits_list):
        with adabits.use_bits(model, bits), torch.no_grad():
            reference = batched_logits(model, images)
        top1 = reference.argmax(1)
        row: dict[str, Any] = {"fake_quant_top1": float((top1 == labels).float().mean() * 100),
                               "requantized_weights": graphs["pte"][index].requantized_weights}
        for name, runtime in runtimes.items():
            with torch.no_grad():
                simulated = batched_logits(graphs[name][index], images)
            out = batched_logits(lambda x, r=runtime, b=bits: r.run(x, bits=b), images)
            row.update({
                f"{name}_graph_pytorch_top1": float((simulated.argmax(1) == labels).float().mean() * 100),
                f"{name}_graph_pytorch_agreement_with_fake_quant": float((simulated.argmax(1) == top1).float().mean() * 100),
                f"{name}_top1": float((out.argmax(1) == labels).float().mean() * 100),
                f"{name}_agreement_with_fake_quant": float((out.argmax(1) == top1).float().mean() * 100),
                f"{name}_agreement_with_its_graph": float((out.argmax(1) == simulated.argmax(1)).float().mean() * 100),
            })
        rows[str(bits)] = row
        _log(f"{bits}: {rows[str(bits)]}")
    switch = _switch_cost(runtimes["pte"], images[:1], [str(b) for b in bits_list])
    return {"checkpoint": checkpoint, "test_images": len(images), "calibration_images": len(calibration),
            "bits": rows, "pte_bytes": pte.stat().st_size, "pte_per_bit_bytes": single,
            "pte_vs_per_bit_files": pte.stat().st_size / sum(single), "switch": switch}


def _switch_cost(runtime: Any, image: torch.Tensor, bits_list: list[str], calls: int = 400) -> dict[str, float]:
    """Median microseconds of a call that keeps the bit-width and of one that switches (interleaved)."""
    same, switched = [], []
    for i in range(calls):
        bits = bits_list[0]
        start = time.perf_counter()
        runtime.run(image, bits=bits)
        same.append(time.perf_counter() - start)
        other = bits_list[1 + i % (len(bits_list) - 1)]
        start = time.perf_counter()
        runtime.run(image, bits=other)
        switched.append(time.perf_counter() - start)
        runtime.run(image, bits=other)  # the next round starts from another bit-width
    return {"same_bits_us": statistics.median(same) * 1e6, "switched_bits_us": statistics.median(switched) * 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("latency", "accuracy"), required=True)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint")
    parser.add_argument("--config", default="apps/fashion_mnist/q_resnet20_adabits.yml")
    parser.add_argument("--overrides", nargs="*", default=[], help="config key=value overrides (accuracy)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"command": full_command("deploy.deploy_integer", args, leave_out=("out",))}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "latency":
            result["latency"] = {arch: latency(arch, args.batches, args.rounds, args.threads, Path(tmp))
                                 for arch in args.archs}
        else:
            if not args.checkpoint:
                raise BadInput("--part accuracy needs --checkpoint PATH (the main job's best_model.pt)")
            result["accuracy"] = accuracy(args.checkpoint, args.config, args.overrides, args.calibration_images,
                                          Path(tmp))
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.deploy_integer"):
        main()
