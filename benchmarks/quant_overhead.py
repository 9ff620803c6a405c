"""Cost of quantization in a training step: ResNet-20 at 4 bits vs the same network at 32 bits.

One process, the variants interleaved round by round so that machine noise hits them alike;
the reported numbers are ratios of medians. Run:

    python -m benchmarks.quant_overhead [--rounds 7] [--batch 128] [--compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

import adabits

from ._results import exit_on_bad_input, full_command, report, time_interleaved


def make_step(bits: int, compiled: bool, batch: int, device: str, channels_last: bool) -> Callable[[], None]:
    """A closure running one forward + backward + SGD step of a fresh ResNet-20 at `bits`."""
    torch.manual_seed(0)
    model = adabits.create_model("resnet20", bits_list=[bits], num_classes=10, in_chans=1).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    images = torch.randint(0, 256, (batch, 1, 28, 28), device=device).float().contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quant_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd 4-bit step")
    parser.add_argument("--channels-last", action="store_true", help="NHWC layout (faster convolutions on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    variants = {"fp32_eager": make_step(32, False, args.batch, args.device, args.channels_last),
                "4bit_eager": make_step(4, False, args.batch, args.device, args.channels_last)}
    if args.compile:
        variants["4bit_compiled"] = make_step(4, True, args.batch, args.device, args.channels_last)
    for step in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            step()
    times = time_interleaved(variants, args.rounds)

    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["fp32_eager"]
    result = {
        "command": full_command("quant_overhead", args),
        "device": args.device,
        "batch": args.batch,
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "ratio_to_fp32_eager": {k: round(v / base, 3) for k, v in median.items()},
    }
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("quant_overhead"):
        main()
