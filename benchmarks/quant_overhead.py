"""Cost of quantization in a training step: ResNet-20 at 4 bits (and a joint {8,6,5,4} step) vs the float network.

One process, the variants interleaved round by round so that machine noise hits them alike;
the reported numbers are ratios of medians to the eager float32 step of the float network.
Variants: the quantizers eager or compiled alone (`compile_quantizers`), the whole model compiled
(--compile), and the same under bf16 autocast (--bf16; the float network in bf16 too). Run:

    python -m benchmarks.quant_overhead [--rounds 7] [--batch 128] [--channels-last] [--compile] [--bf16] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

import adabits
from adabits.engine import precision

from ._machine import describe
from ._results import exit_on_bad_input, full_command, report, time_interleaved


def make_step(bits_list: list[int], compiled: bool, batch: int, device: str, channels_last: bool,
              compiled_quantizers: bool = False, dtype: str = "fp32") -> Callable[[], None]:
    """A closure running one joint step (forward + backward per bit-width, one SGD update) of a fresh ResNet-20."""
    torch.manual_seed(0)
    model = adabits.create_model("resnet20", bits_list=bits_list, num_classes=10, in_chans=1).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    if compiled_quantizers:
        adabits.compile_quantizers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    images = torch.randint(0, 256, (batch, 1, 28, 28), device=device).float().contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)
    where = torch.device(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for bits in bits_list:
            adabits.set_bits(model, bits)
            with precision.autocast(dtype, where):
                logits = forward(images).float()
            torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


JOINT = [8, 6, 5, 4]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quant_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd 4-bit step")
    parser.add_argument("--bf16", action="store_true", help="also time the float and 4-bit steps under bf16 autocast")
    parser.add_argument("--no-joint", action="store_true", help="leave out the joint {8,6,5,4} steps")
    parser.add_argument("--channels-last", action="store_true", help="NHWC layout (faster convolutions on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    def step(bits: list[int], **options: object) -> Callable[[], None]:
        return make_step(bits, options.pop("compiled", False), args.batch, args.device, args.channels_last,  # type: ignore[arg-type]
                         **options)  # type: ignore[arg-type]

    variants = {"fp32_eager": step([32]), "4bit_eager": step([4]),
                "4bit_compiled_quantizers": step([4], compiled_quantizers=True)}
    if not args.no_joint:
        variants["joint8654_eager"] = step(JOINT)
        variants["joint8654_compiled_quantizers"] = step(JOINT, compiled_quantizers=True)
    if args.compile:
        variants["4bit_compiled"] = step([4], compiled=True)
    if args.bf16:
        variants["fp32_net_bf16"] = step([32], dtype="bf16")
        variants["4bit_bf16_eager"] = step([4], dtype="bf16")
        variants["4bit_bf16_compiled_quantizers"] = step([4], dtype="bf16", compiled_quantizers=True)
    for run in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            run()
    times = time_interleaved(variants, args.rounds)

    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["fp32_eager"]
    result = {
        "command": full_command("quant_overhead", args),
        "machine": describe(),
        "device": args.device,
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "ratio_to_fp32_eager": {k: round(v / base, 3) for k, v in median.items()},
    }
    if args.bf16:
        result["bf16_ratio_to_fp32_same_step"] = {
            "float_net": round(median["fp32_net_bf16"] / base, 3),
            "4bit_eager": round(median["4bit_bf16_eager"] / median["4bit_eager"], 3),
            "4bit_compiled_quantizers": round(median["4bit_bf16_compiled_quantizers"]
                                              / median["4bit_compiled_quantizers"], 3)}
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("quant_overhead"):
        main()
