"""The trade-off an exported model offers at run time: top-1, latency and bits per weight at each bit-width,
per runtime, measured on the deployed file itself (`adabits.runtime.load`), and its plot.

Why on the file: where lower bits pay depends on the runtime's kernels (docs/deploy.md), so the choice a
`pick_bits` loop makes can only be shown from the runtime that serves it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime import load


def held_out_images(count: int, uint8_input: bool, dataset: str = "fashion_mnist") -> tuple[np.ndarray, np.ndarray]:
    """The first `count` held-out images of `dataset` (in memory: Fashion-MNIST, CIFAR-10) as an exported model
    takes them (raw 0..255 pixels for `uint8_input`, else normalised), and their labels."""
    from ..data import ImageSplits, ToModelInput, build_splits
    from ..engine import TrainConfig

    splits = build_splits(TrainConfig(dataset=dataset))
    if not isinstance(splits, ImageSplits):
        raise ValueError(f"dataset {dataset!r} is read from folders; pass images and labels to measure_tradeoff")
    to_input = ToModelInput(not uint8_input, splits.mean, splits.std)
    return to_input(splits.val_images[:count]).numpy(), splits.val_labels[:count].numpy()


def measure_tradeoff(path: str | Path, images: np.ndarray, labels: np.ndarray,
                     runtimes: Sequence[str | None] = (None,), batch: int = 1) -> list[dict[str, Any]]:
    """One row per runtime and bit-width: {runtime, bits, latency_ms (at `batch`), top1 (on `images`, as the
    file takes them), weight_bits (bits per weight, None where the file does not record it)}."""
    rows = []
    default = "executorch" if Path(path).suffix == ".pte" else "onnxruntime"  # what load() runs a file in
    for runtime in runtimes:
        model = load(path, runtime=runtime)
        latency = model.measure_latency(batch=batch)
        for bits in model.bits_list:
            top1 = float((model.run(images, bits=bits).argmax(1) == labels).mean())
            rows.append({"runtime": runtime or default, "bits": bits,
                         "latency_ms": latency[bits], "top1": top1, "weight_bits": model.weight_bits.get(bits)})
    return rows


def plot_tradeoff(rows: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> None:
    """Three panels against the bit-width (top-1, latency, bits per weight), a line per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        mine = [r for r in rows if r["runtime"] == runtime]
        for ax, key in zip(axes, ("top1", "latency_ms", "weight_bits")):
            ax.plot([r["bits"] for r in mine], [np.nan if r[key] is None else r[key] for r in mine], marker="o",
                    label=runtime)
    for ax, name in zip(axes, ("top-1", "latency, ms", "size: bits per weight")):
        ax.set_title(name)
        ax.set_xlabel("bit-width")
    axes[1].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
