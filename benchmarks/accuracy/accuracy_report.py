"""The accuracy benchmark's report: its tables (Markdown, defined in accuracy_tables.py) and plots (PNG) from the JSON that benchmarks/accuracy/accuracy.py writes.

    python -m benchmarks.accuracy.accuracy_report benchmarks/results/accuracy/accuracy.json   # rewrite accuracy.md and the PNGs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..common import BadInput, exit_on_bad_input
from .accuracy_tables import ABLATIONS, PEERS, SEVEN_BITS, markdown, mean, peer_table  # noqa: F401  (re-exported)


def plot_accuracy(rows: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row, bits, style, label in [
        ("individual", [8, 6, 5, 4, 3, 2], "o-", "individually trained"),
        ("adabits_8654", [8, 6, 5, 4], "s--", "AdaBits {8,6,5,4}, one model"),
        ("adabits_432", [4, 3, 2], "^--", "AdaBits {4,3,2}, one model"),
        ("adabits_8654_quarter_lr", [8, 6, 5, 4], "D:", "AdaBits {8,6,5,4} at lr/4 (individual: same within 0.17)"),
        ("adabits_8654_mean", [8, 6, 5, 4], "s--", "AdaBits {8,6,5,4}, `mean` loss"),
        ("adabits_8654_mean_distill_float", [8, 6, 5, 4], "s:", "AdaBits {8,6,5,4}, `mean`, taught by the float model"),
        ("adabits_432_mean", [4, 3, 2], "^--", "AdaBits {4,3,2}, `mean` loss"),
        ("adabits_432_mean_distill_float", [4, 3, 2], "^:", "AdaBits {4,3,2}, `mean`, taught by the float model"),
    ]:
        names = [f"individual_{b}" if row == "individual" else row for b in bits]
        points = [(b, rows[n]["top1"][str(b)]) for b, n in zip(bits, names) if str(b) in rows.get(n, {}).get("top1", {})]
        if points:
            ax.errorbar([b for b, _ in points], [s["mean"] for _, s in points],
                        yerr=[s["half_range"] for _, s in points], fmt=style, capsize=3, label=label)
    fp = mean(rows, "fp", 32) if "fp" in rows else mean(rows, "stage1", 32)
    if fp is not None:
        ax.axhline(fp, color="gray", linestyle=":", label=f"full precision ({fp:.2f})")
    ax.set_xlabel("bits (weights and activations)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("ResNet-20, Fashion-MNIST (lr 0.02 unless noted)")
    ax.invert_xaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablations(rows: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [r for r in ABLATIONS if "top1" in rows.get(r, {})]
    fig, ax = plt.subplots(figsize=(8.5, 5))
    width = 0.8 / max(1, len(present))
    for i, row in enumerate(present):
        stats = [rows[row]["top1"][str(b)] for b in (4, 3, 2)]
        ax.bar([x + i * width for x in range(3)], [s["mean"] for s in stats], width,
               yerr=[s["half_range"] for s in stats], capsize=2, label=ABLATIONS[row].replace("`", ""))
    ax.set_xticks([x + width * (len(present) - 1) / 2 for x in range(3)], ["4 bits", "3 bits", "2 bits"])
    ax.set_ylabel("top-1 (%)")
    low = min((rows[r]["top1"][str(b)]["mean"] for r in present for b in (4, 3, 2)), default=0)
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_title("Ablations of the joint {4,3,2} model")
    missing = [ABLATIONS[r].replace("`", "") for r in ABLATIONS if r in rows and r not in present]
    if missing:
        ax.text(0.99, 0.98, "diverged, not shown: " + "; ".join(missing), transform=ax.transAxes,
                ha="right", va="top", fontsize=7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], stem: Path) -> None:
    """stem.md with the tables its rows fill, stem_bits.png, and stem_ablations.png where it has ablation rows."""
    stem.with_suffix(".md").write_text(markdown(results))
    plot_accuracy(results["rows"], Path(f"{stem}_bits.png"))
    if any(row in results["rows"] for row in ABLATIONS):
        plot_ablations(results["rows"], Path(f"{stem}_ablations.png"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.accuracy_report", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    path = parser.parse_args().results
    if not path.is_file():
        raise BadInput(f"no results file {path}")
    write_report(json.loads(path.read_text()), path.with_suffix(""))


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.accuracy_report"):
        main()
