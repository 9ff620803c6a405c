"""Training-step time of an ImageNet model at 4 bits against the same architecture in plain float.

"fp32" is the model built with bits_list [32], clamp false and no SAT rescale: exactly an ordinary
float network (what a user would train without this library). "4bit" is the model built with
bits_list [4] and the default QuantConfig. One step = forward, cross-entropy, backward, SGD step
at 224x224, eager or torch.compile'd. Variants are timed interleaved, round by round, in one process; the report gives medians
and their ratios, and how long the first (compiling) call of each compiled variant took.

    python -m benchmarks.training.model_step_time --model mobilenet_v2 [--batch 8] [--rounds 5] [--variants ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from collections.abc import Callable

import torch

import adabits

from ..common import exit_on_bad_input, full_command, report, time_interleaved

PLAIN_FLOAT = {"clamp": False, "rescale": False, "rescale_conv": False}
#: variant name -> (bits, compiled)
VARIANTS = {"fp32_eager": (32, False), "4bit_eager": (4, False), "fp32_compiled": (32, True), "4bit_compiled": (4, True)}
RATIOS = (("4bit_eager", "fp32_eager"), ("4bit_compiled", "fp32_compiled"), ("4bit_compiled", "fp32_eager"))


def make_step(model_name: str, bits: int, compiled: bool, batch: int, size: int) -> Callable[[], None]:
    """A closure running one training step of a fresh model at `bits` (32 = plain float)."""
    torch.manual_seed(0)
    options = PLAIN_FLOAT if bits == 32 else {}
    model = adabits.create_model(model_name, bits_list=[bits], num_classes=1000, **options)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    images = torch.randint(0, 256, (batch, 3, size, size)).float().contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.model_step_time", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", choices=adabits.list_models())
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after the first")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which steps to time (a run of one compiled variant fills torch's compile cache)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    variants = {name: VARIANTS[name] for name in args.variants}
    steps: dict[str, Callable[[], None]] = {}
    first_call_s: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in variants}

    def stopped(signum: int, frame: object) -> None:
        """`timeout` sends SIGTERM: record what was measured and say where it stopped."""
        running = next((f"the first step of {n}" for n in variants if n not in first_call_s), "warm-up or timed rounds")
        summarize(args, first_call_s, times, f"stopped by signal {signum} during {running}")
        sys.exit(124)

    signal.signal(signal.SIGTERM, stopped)
    for name, (bits, compiled) in variants.items():
        steps[name] = make_step(args.model, bits, compiled, args.batch, args.size)
        start = time.perf_counter()
        steps[name]()  # the first call compiles the compiled variants
        first_call_s[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: first step {first_call_s[name]} s", flush=True)
        for _ in range(args.warmup):
            steps[name]()
    time_interleaved(steps, args.rounds, times)  # fills `times` round by round, for `stopped`

    summarize(args, first_call_s, times, None)


def summarize(args: argparse.Namespace, first_call_s: dict[str, float], times: dict[str, list[float]],
              stopped: str | None) -> None:
    median = {name: statistics.median(t) for name, t in times.items() if t}
    ratios = {f"{a} / {b}": median[a] / median[b] for a, b in RATIOS if a in median and b in median}
    result = {
        "command": full_command("training.model_step_time", args),
        "memory_format": "channels_last",
        "model": args.model,
        "input": [args.batch, 3, args.size, args.size],
        "first_step_s": first_call_s,
        "median_step_s": {k: round(v, 3) for k, v in median.items()},
        "all_step_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    if stopped:
        result["incomplete"] = stopped
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("training.model_step_time"):
        main()
