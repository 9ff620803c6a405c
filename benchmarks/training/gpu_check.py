"""The first GPU answers in one command: are its outputs those of the CPU, and is its training step fast?

    python -m benchmarks.training.gpu_check [--device cuda] [--rounds 20] [--batch 256] [--out FILE] [--quick]

Correctness, on the same inputs on the CPU and on --device (TF32 off, so that both multiply in float32):
- every quantizer at every bit-width 2..8: PACT activations (each scheme, one- and two-sided, the
  eager path and the fused kernels of `compile_quantizers`) and DoReFa weights (each scheme, with
  SAT's rescale): the share of codes that differ (a value on a rounding tie may round apart; at most
  `--code-tolerance`) and the relative difference of the gradients of the input and of alpha;
- every registered model at every bit-width of [8, 6, 4, 2] and in float, in train and eval mode: the
  largest relative difference of one layer's output given the same input on both (at most
  `--model-tolerance`; the logits' difference is reported beside it, not judged: `check_models` says
  why), and the host reads of one joint training step on the device (there must be none).
Speed, interleaved round by round (benchmarks.common.time_interleaved): the ResNet-20 step eager in
float, at 4 bits eager, with compiled quantizers, compiled whole, under bf16 and fp16 autocast, and a
joint {8,6,5,4} step, as ratios to the eager float step (`benchmarks/training/quant_overhead.py` does the same on a CPU).

Exits 1 when a check fails. `--device cpu` runs everything CPU against CPU: a smoke test of the
script on a machine without a GPU (the tests run it so, with --quick).
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor

import adabits
from adabits.analysis.host_reads import HostReads
from adabits.quant.functional import quantize_activation, quantize_weight, sat_weight
from adabits.quant.schemes import SCHEMES, get_scheme

from ..common import BadInput, exit_on_bad_input, full_command, report, time_interleaved
from .quant_overhead import JOINT, make_step

BITS = (2, 3, 4, 5, 6, 7, 8)
MODEL_BITS = [8, 6, 4, 2]
#: input size per model family: the CIFAR ResNets take 32x32, the ImageNet models any size >= 32, the ViT its own
IMAGE_SIZE = {"resnet18": 64, "resnet34": 64, "resnet50": 64, "mobilenet_v1": 64, "mobilenet_v2": 64, "vit_tiny": 28}


@contextmanager
def float32_matmuls() -> Iterator[None]:
    """TF32 off (cuDNN convolutions use it by default): CPU and GPU then both multiply in float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_difference(a: Tensor, b: Tensor) -> float:
    """|a - b| / |a| (Frobenius), b brought to a's device; 0 when both are zero."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    norm = a.norm().item()
    return (a - b).norm().item() / norm if norm else float((a - b).norm().item())


def codes_differ(a: Tensor, b: Tensor, step: float) -> float:
    """The share of elements of two quantized tensors that stand for different codes (more than half a step apart)."""
    return ((a.detach().cpu() - b.detach().cpu()).abs() > step / 2).double().mean().item()


def _on_both(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, alpha: Tensor,
             device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
    """fn's output and the gradients of (x, alpha) under a fixed upstream gradient, on the CPU and on `device`."""
    upstream = torch.randn_like(x)
    results = []
    for where in (torch.device("cpu"), device):
        # fresh leaves on each side: .to() of a CPU tensor to the CPU is the tensor itself
        xs, al = x.detach().to(where, copy=True).requires_grad_(), alpha.detach().to(where, copy=True).requires_grad_()
        out = fn(xs, al)
        out.backward(upstream.to(where))
        results.append([out.detach(), xs.grad, al.grad])
    return results[0], results[1]


def check_activation_quantizers(device: torch.device, bits_list: tuple[int, ...]) -> list[dict[str, Any]]:
    """PACT at every scheme, side, path and bit-width: code mismatches and gradient differences."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, 8, 8, generator=gen) * 3
    alpha = torch.tensor(2.5)
    rows = []
    for scheme in SCHEMES:
        for double_side in (False, True):
            for compiled in (False, True):
                for bits in bits_list:
                    fn = partial(quantize_activation, bits=bits, scheme=scheme, double_side=double_side,
                                 compiled=compiled)
                    (out_c, gx_c, ga_c), (out_d, gx_d, ga_d) = _on_both(fn, x, alpha, device)
                    step = 2.5 / get_scheme(scheme).levels(bits) * (2 if double_side else 1)
                    rows.append({"quantizer": "pact", "scheme": scheme, "double_side": double_side,
                                 "compiled": compiled, "bits": bits, "codes_differ": codes_differ(out_c, out_d, step),
                                 "grad_x": relative_difference(gx_c, gx_d), "grad_alpha": relative_difference(ga_c, ga_d)})
    return rows


def _dorefa(weight: Tensor, _: Tensor, bits: int, scheme: str) -> Tensor:
    return quantize_weight(weight, bits, scheme)


def _sat(weight: Tensor, _: Tensor, bits: int, scheme: str) -> Tensor:
    return sat_weight(weight, bits, scheme, clamp=True, rescale=True, fan_out=weight.shape[0] * 9)


def check_weight_quantizers(device: torch.device, bits_list: tuple[int, ...]) -> list[dict[str, Any]]:
    """DoReFa weights (and SAT's rescale) at every scheme and bit-width: code mismatches and gradients."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 16, 3, 3, generator=gen) * 0.1
    rows = []
    for scheme in SCHEMES:
        for bits in bits_list:
            for name, quantizer in (("dorefa", _dorefa), ("sat", _sat)):
                fn = partial(quantizer, bits=bits, scheme=scheme)
                (out_c, gw_c, _), (out_d, gw_d, _) = _on_both(fn, weight, torch.tensor(1.0), device)
                step = (out_c.max() - out_c.min()).item() / get_scheme(scheme).levels(bits)
                rows.append({"quantizer": name, "scheme": scheme, "bits": bits,
                             "codes_differ": codes_differ(out_c, out_d, step),
                             "grad_w": relative_difference(gw_c, gw_d)})
    return rows


def _model(name: str, bits_list: list[int]) -> torch.nn.Module:
    torch.manual_seed(0)
    return adabits.create_model(name, bits_list=bits_list, num_classes=10, in_chans=3)


def _layer_inputs(model: torch.nn.Module, images: Tensor) -> tuple[Tensor, dict[str, tuple]]:
    """The logits of `model` and the inputs each of its leaf modules received (the first call's)."""
    inputs: dict[str, tuple] = {}

    def record(name: str, _: torch.nn.Module, args: tuple) -> None:  # clones: an in-place ReLU changes its input
        inputs.setdefault(name, tuple(a.clone() if isinstance(a, Tensor) else a for a in args))

    handles = [module.register_forward_pre_hook(partial(record, name))
               for name, module in model.named_modules() if not list(module.children())]
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, inputs


def check_models(device: torch.device, names: list[str], bits_list: list[int]) -> list[dict[str, Any]]:
    """Every model at every bit-width (and in float), train and eval mode, CPU vs device.

    Judged layer by layer: each layer of the device model gets the input its CPU twin got, so that its
    difference is its own (`layer`, the largest over the model's layers). The end-to-end difference of the
    logits (`logits`) is reported, not judged: in an untrained deep network one activation that lands on a
    rounding tie and rounds the other way on one device moves the logits by tens of percent (measured on the
    first H200 run: up to 0.93 at 6 bits in ResNet-50, where every layer alone agreed)."""
    rows = []
    for name in names:
        size = IMAGE_SIZE.get(name, 32)
        images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(2))
        for bits_group in (bits_list, [32]):
            cpu_model = _model(name, bits_group)
            dev_model = _model(name, bits_group).to(device)
            dev_modules = dict(dev_model.named_modules())
            for bits in bits_group:
                adabits.set_bits(cpu_model, bits)
                adabits.set_bits(dev_model, bits)
                row: dict[str, Any] = {"model": name, "bits": bits}
                for mode in ("train", "eval"):
                    cpu_model.train(mode == "train")
                    dev_model.train(mode == "train")
                    cpu_logits, inputs = _layer_inputs(cpu_model, images)
                    with torch.no_grad():
                        row[f"logits_{mode}"] = relative_difference(cpu_logits, dev_model(images.to(device)))
                        worst, worst_layer = 0.0, ""
                        cpu_modules = dict(cpu_model.named_modules())
                        for layer, args in inputs.items():
                            if not all(isinstance(x, Tensor) and x.is_floating_point() for x in args):
                                continue
                            cpu_out = cpu_modules[layer](*(x.clone() for x in args))
                            dev_out = dev_modules[layer](*(x.to(device, copy=True) for x in args))
                            if isinstance(cpu_out, Tensor) and relative_difference(cpu_out, dev_out) > worst:
                                worst, worst_layer = relative_difference(cpu_out, dev_out), layer
                    row[f"layer_{mode}"], row[f"worst_layer_{mode}"] = worst, worst_layer
                rows.append(row)
    return rows


def joint_step_host_reads(device: torch.device) -> list[str]:
    """The host reads of one joint {8,6,5,4} training step (forward, backward, SGD update) on the device."""
    model = _model("resnet20", JOINT).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(16, 3, 32, 32, device=device), torch.randint(0, 10, (16,), device=device)
    with HostReads() as reads:
        optimizer.zero_grad(set_to_none=True)
        for bits in JOINT:
            adabits.set_bits(model, bits)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return reads.calls


def step_ratios(device: str, batch: int, rounds: int, quick: bool) -> dict[str, Any]:
    """Median step times and their ratio to the eager float step, the variants interleaved."""
    def step(bits: list[int], **options: Any) -> Callable[[], None]:
        return make_step(bits, options.pop("compiled", False), batch, device, True, **options)

    variants = {"fp32_eager": step([32]), "4bit_eager": step([4]),
                "4bit_compiled_quantizers": step([4], compiled_quantizers=True)}
    if not quick:
        variants.update({"4bit_compiled": step([4], compiled=True),
                         "fp32_net_bf16": step([32], dtype="bf16"),
                         "4bit_bf16_eager": step([4], dtype="bf16"),
                         "4bit_bf16_compiled_quantizers": step([4], dtype="bf16", compiled_quantizers=True),
                         "4bit_fp16_eager": step([4], dtype="fp16"),
                         "joint8654_eager": step(JOINT),
                         "joint8654_compiled_quantizers": step(JOINT, compiled_quantizers=True)})
    for run in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            run()
    median = {name: statistics.median(t) for name, t in time_interleaved(variants, rounds).items()}
    return {"median_step_s": {k: round(v, 5) for k, v in median.items()},
            "ratio_to_fp32_eager": {k: round(v / median["fp32_eager"], 3) for k, v in median.items()}}


def failures(result: dict[str, Any], code_tolerance: float, model_tolerance: float, grad_tolerance: float) -> list[str]:
    """One line per check beyond its tolerance."""
    lines = []
    for row in result["quantizers"]:
        grads = {k: v for k, v in row.items() if k.startswith("grad_")}
        if row["codes_differ"] > code_tolerance or any(v > grad_tolerance for v in grads.values()):
            lines.append(f"quantizer {row}")
    for row in result["models"]:
        if max(row["layer_train"], row["layer_eval"]) > model_tolerance:
            lines.append(f"model {row}")
    if result["joint_step_host_reads"]:
        lines.append(f"the joint step reads the device on the host: {result['joint_step_host_reads']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="the device checked against the CPU (default: cuda when there is one)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="bits 4 and 8, ResNet-20 only, three timed steps")
    parser.add_argument("--code-tolerance", type=float, default=1e-3)
    parser.add_argument("--grad-tolerance", type=float, default=1e-3)
    parser.add_argument("--model-tolerance", type=float, default=2e-2)
    parser.add_argument("--checks-only", action="store_true", help="the correctness checks alone, no step timings")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.device is None:
        raise BadInput("no CUDA device here: pass --device cpu to run the checks CPU against CPU")
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise BadInput(f"--device {args.device} is not usable here: {str(error).splitlines()[0]}") from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bits = (4, 8) if args.quick else BITS
    names = ["resnet20"] if args.quick else [n for n in adabits.list_models() if n != "resnet_cifar"]
    with float32_matmuls():
        result: dict[str, Any] = {
            "command": full_command("training.gpu_check", args),
            "device": str(device),
            "quantizers": check_activation_quantizers(device, bits) + check_weight_quantizers(device, bits),
            "models": check_models(device, names, [8, 4] if args.quick else MODEL_BITS),
            "joint_step_host_reads": joint_step_host_reads(device),
        }
    if not args.checks_only:
        result["step"] = step_ratios(str(device), args.batch, args.rounds, args.quick)
    result["failures"] = failures(result, args.code_tolerance, args.model_tolerance, args.grad_tolerance)
    report(result, args.out, echo=False)
    print(f"gpu_check on {device}: {len(result['quantizers'])} quantizer and {len(result['models'])} model checks, "
          f"{len(result['failures'])} beyond tolerance"
          + ("; step ratios to the eager float step: " + ", ".join(
              f"{k} {v}" for k, v in result["step"]["ratio_to_fp32_eager"].items()) if "step" in result else ""))
    for line in result["failures"]:
        print(f"  FAIL {line}")
    if result["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    with exit_on_bad_input("training.gpu_check"):
        main()
