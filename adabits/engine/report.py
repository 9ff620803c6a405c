"""How a run's numbers read: epoch tables, metrics.jsonl rows, results.md, accuracy_vs_bits.png (written by
engine/run_records.py).

Bit-widths are labelled `8-bit`, `FP32`, and `w4a8` for a pair (weight bits, activation bits), and
ordered by (weight bits, activation bits) wherever they are sorted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..quant.bitwidth import BitPair, Bits, bits_text, parse_bits

Metrics = dict[Bits, dict[str, float]]


def bits_order(bits: Bits) -> BitPair:
    """Sort key of a bit-width: (weight bits, activation bits)."""
    return parse_bits(bits)


def epoch_table(epoch: int, num_epochs: int, lr: float, seconds: float,
                train: Metrics, val: Metrics) -> str:
    """A fixed-width table of one epoch: train and val loss and errors per bit-width."""
    head = f"epoch {epoch + 1}/{num_epochs}  lr {lr:.4g}  {seconds:.0f}s"
    cols = f"{'bits':>6} | {'train loss':>10} | {'train top1 err':>14} | {'val loss':>8} | {'val top1 err':>12} | {'val top5 err':>12}"
    lines = [head, cols, "-" * len(cols)]
    for b, v in val.items():
        t = train.get(b, {})
        lines.append(f"{bits_text(b):>6} | {t.get('loss', float('nan')):>10.4f} | "
                     f"{100 * t.get('top1_error', float('nan')):>13.2f}% | {v['loss']:>8.4f} | "
                     f"{100 * v['top1_error']:>11.2f}% | {100 * v.get('top5_error', float('nan')):>11.2f}%")
    return "\n".join(lines)


def eval_table(val: Metrics) -> str:
    lines = [f"{'bits':>6} | {'loss':>8} | {'top1 err':>9} | {'top5 err':>9} | {'top1 acc':>9}", "-" * 53]
    for b, v in val.items():
        lines.append(f"{bits_text(b):>6} | {v['loss']:>8.4f} | {100 * v['top1_error']:>8.2f}% | "
                     f"{100 * v.get('top5_error', float('nan')):>8.2f}% | {100 * (1 - v['top1_error']):>8.2f}%")
    return "\n".join(lines)


def results_markdown(title: str, epoch: int, val: Metrics) -> str:
    """results.md: one row per bit-width with top-1 / top-5 error (%) of the best epoch."""
    ks = sorted({key for v in val.values() for key in v if key.startswith("top")})
    header = "| bits | " + " | ".join(k.replace("_", " ") + " (%)" for k in ks) + " | top1 accuracy (%) |"
    sep = "|" + "---|" * (len(ks) + 2)
    rows = [f"| {bits_text(b)} | " + " | ".join(f"{100 * v[k]:.2f}" for k in ks) + f" | {100 * (1 - v['top1_error']):.2f} |"
            for b, v in val.items()]
    mean = sum(v["top1_error"] for v in val.values()) / len(val)
    return "\n".join([f"# {title}", "", f"Best epoch {epoch + 1} (by mean top-1 error over bit-widths: {100 * mean:.2f}%).",
                      "", header, sep, *rows, ""])


def plot_accuracy(path: Path, title: str, val: Metrics) -> None:
    """accuracy_vs_bits.png: top-1 (and top-5) accuracy per bit-width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = sorted(val, key=bits_order)
    labels = [bits_text(b) for b in bits]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, marker in (("top1_error", "o"), ("top5_error", "s")):
        if all(key in val[b] for b in bits):
            ax.plot(labels, [100 * (1 - val[b][key]) for b in bits], marker=marker,
                    label=key.replace("_error", " accuracy"))
    ax.set_xlabel("bit-width")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:  # a killed run never leaves half a PNG
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def metrics_lines(epoch: int, lr: float, seconds: float, train: Metrics, val: Metrics) -> list[str]:
    """The metrics.jsonl lines of one epoch (one per bit-width), as written and as checkpoints store them."""
    lines = []
    for b, v in val.items():
        row: dict[str, Any] = {"epoch": epoch + 1, "bits": b, "bits_label": bits_text(b), "lr": lr,
                               "time_s": round(seconds, 2)}
        row.update({f"train_{k}": x for k, x in train.get(b, {}).items()})
        row.update({f"val_{k}": x for k, x in v.items()})
        lines.append(json.dumps(row) + "\n")
    return lines


def line_epoch(line: str) -> int | None:
    """The epoch of a metrics.jsonl line; None for a line that is not a whole row (a cut-off append)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    epoch = row.get("epoch") if isinstance(row, dict) else None
    return epoch if isinstance(epoch, int) else None


def _epoch_ranges(epochs: set[int]) -> str:
    return ", ".join(str(e) for e in sorted(epochs))


def reconcile_metrics(path: Path, lines: list[str], epochs_done: int) -> str | None:
    """Make metrics.jsonl hold exactly `lines` (the epochs up to the checkpoint's); a note of what changed, if anything.

    A process killed between a checkpoint and its metrics append loses that epoch's rows, one resumed
    from an older checkpoint has rows of epochs it will train again: both are fixed here, atomically.
    """
    old = path.read_text().splitlines(keepends=True) if path.is_file() else []
    if old == lines:
        return None
    with atomic_write(path, "w") as f:
        f.writelines(lines)
    old_epochs = {e for e in map(line_epoch, old) if e is not None}
    new_epochs = {e for e in map(line_epoch, lines) if e is not None}
    parts = []
    if new_epochs - old_epochs:
        parts.append(f"restored the rows of epoch(s) {_epoch_ranges(new_epochs - old_epochs)} from the checkpoint")
    if old_epochs - new_epochs:
        parts.append(f"removed the rows of epoch(s) {_epoch_ranges(old_epochs - new_epochs)}, after the "
                     f"checkpoint's epoch {epochs_done} (they will be trained again)")
    if not parts:
        parts.append("rewrote it from the checkpoint's record (it held cut-off or repeated rows)")
    return f"{path.name}: " + "; ".join(parts)
