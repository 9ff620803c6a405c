"""Serve requests at the bit-width each one's latency budget allows, from one exported model.

    python examples/latency_budget.py runs/q_resnet20_adabits/model.pte --budgets 0.2 0.5 5
    python examples/latency_budget.py runs/q_resnet20_adabits/onnx --budgets 0.2 0.5 5

The model's latency per bit-width is measured once at start (batch 1, on this machine); each request
then runs at the most bits whose latency fits its budget, or at the fewest bits when none fits.
Switching is choosing a loaded method or session: nothing is reloaded.
"""
from __future__ import annotations

import argparse

import numpy as np

from adabits.runtime import load, pick_bits


def serve(path: str, budgets: list[float], seed: int = 0) -> list[tuple[float, str, int]]:
    """(budget ms, bits chosen, predicted class) for one random image per budget."""
    model = load(path)
    latency = model.measure_latency(batch=1)
    print("latency per bit-width (ms):", {bits: round(ms, 3) for bits, ms in latency.items()})
    fewest = min(latency, key=latency.get)
    rng = np.random.default_rng(seed)
    served = []
    for budget in budgets:
        image = rng.integers(0, 256, (1, *model.input_shape)).astype(np.float32)
        bits = pick_bits(latency, budget) or fewest
        served.append((budget, bits, int(model.run(image, bits=bits).argmax())))
        print(f"budget {budget} ms -> {bits} bits, class {served[-1][2]}")
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a .pte file or a folder of ONNX files (adabits export --format pte | onnx)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.2, 0.5, 5.0], help="milliseconds per request")
    args = parser.parse_args()
    serve(args.path, args.budgets)


if __name__ == "__main__":
    main()
