"""Serve requests at the bit-width each one's latency budget allows, from one exported model.

    python examples/latency_budget.py runs/q_resnet20_adabits/model.pte --budgets 0.2 0.5 5
    python examples/latency_budget.py runs/q_resnet20_adabits/onnx --budgets 0.2 0.5 5

The model's latency per bit-width is measured once at start (batch 1, on this machine); each request
then runs at the most bits whose latency fits its budget, or at the fewest bits when none fits.
Switching is choosing a loaded method or session: nothing is reloaded.

`--plot FILE` draws the trade-off instead: accuracy on Fashion-MNIST's test images (the default data),
latency and bits per weight at each bit-width, one line per file and runtime (`--runtimes`: ONNX Runtime and
OpenVINO for a folder; a .pte runs in ExecuTorch). Run OpenVINO and ExecuTorch in separate processes
(docs/deploy.md).

    python examples/latency_budget.py runs/q_resnet20_adabits/onnx --runtimes onnxruntime openvino --plot tradeoff.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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


def test_images(count: int, uint8_input: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` Fashion-MNIST test images as the exported model takes them, and their labels."""
    from adabits.data import ImageSplits, ToModelInput, build_splits
    from adabits.engine import TrainConfig

    splits = build_splits(TrainConfig(dataset="fashion_mnist"))
    assert isinstance(splits, ImageSplits)  # Fashion-MNIST is held in memory
    to_input = ToModelInput(not uint8_input, splits.mean, splits.std)
    return to_input(splits.val_images[:count]).numpy(), splits.val_labels[:count].numpy()


def tradeoff(path: str, runtimes: list[str | None], count: int, batch: int = 1) -> list[dict[str, Any]]:
    """Per runtime and bit-width: latency (ms at `batch`), top-1 on `count` test images, bits per weight."""
    rows = []
    for runtime in runtimes:
        model = load(path, runtime=runtime)
        images, labels = test_images(count, model.uint8_input)
        latency = model.measure_latency(batch=batch)
        for bits in model.bits_list:
            top1 = float((model.run(images, bits=bits).argmax(1) == labels).mean())
            rows.append({"runtime": runtime or ("executorch" if path.endswith(".pte") else "onnxruntime"),
                         "bits": bits, "latency_ms": latency[bits], "top1": top1,
                         "weight_bits": model.weight_bits.get(bits)})
    return rows


def plot(rows: list[dict[str, Any]], out: str) -> None:
    """Three panels against the bit-width: top-1, latency and bits per weight, a line per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        mine = [r for r in rows if r["runtime"] == runtime]
        labels = [r["bits"] for r in mine]
        for ax, key in zip(axes, ("top1", "latency_ms", "weight_bits")):
            ax.plot(labels, [r[key] if r[key] is not None else np.nan for r in mine], marker="o", label=runtime)
    for ax, title in zip(axes, ("top-1 (test images)", "latency, ms (batch 1)", "size: bits per weight")):
        ax.set_title(title)
        ax.set_xlabel("bit-width")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a .pte file or a folder of ONNX files (adabits export --format pte | onnx)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.2, 0.5, 5.0], help="milliseconds per request")
    parser.add_argument("--plot", help="draw the trade-off per bit-width to this image file instead of serving")
    parser.add_argument("--runtimes", nargs="+", default=[None], help="onnxruntime and/or openvino (a folder)")
    parser.add_argument("--test-images", type=int, default=2000, help="Fashion-MNIST test images for top-1")
    parser.add_argument("--rows", help="a JSON file of earlier rows (another process's runtime): drawn too, and "
                                       "rewritten with this run's added")
    args = parser.parse_args()
    if args.plot:
        earlier = json.loads(Path(args.rows).read_text()) if args.rows and Path(args.rows).exists() else []
        rows = earlier + tradeoff(args.path, args.runtimes, args.test_images)
        for row in rows:
            print(row)
        if args.rows:
            Path(args.rows).write_text(json.dumps(rows, indent=2) + "\n")
        plot(rows, args.plot)
    else:
        serve(args.path, args.budgets)


if __name__ == "__main__":
    main()
