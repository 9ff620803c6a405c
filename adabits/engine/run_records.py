"""The run folder's writer: config.yaml, metrics.jsonl (and TensorBoard), results.md, accuracy_vs_bits.png.

Only rank 0 makes one. Every file but metrics.jsonl is rewritten whole and atomically; metrics.jsonl
is appended a row per bit-width per epoch and, on resume, first made to agree with the checkpoint's
record of it (`report.reconcile_metrics`). A refused write is one line naming the file
(`write_errors.reported`). TensorBoard is the optional `tensorboard` extra: asked for but not
installed, the run goes on without it after one note that says how to get it.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..quant.bitwidth import bits_text
from . import report, run_folder
from .checkpoint import Resumed
from .config import TrainConfig
from .write_errors import reported

Metrics = report.Metrics


class RunRecords:
    """The files of one run folder, from the config written at the start to the results after each epoch."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, echo: Callable[[str], None]) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.echo = echo
        self.jsonl = run_dir / run_folder.METRICS
        self.tb: Any = None

    def start(self, resumed: Resumed | None, history: list[str]) -> None:
        """config.yaml, metrics.jsonl made to agree with `history` (the checkpoint's rows), TensorBoard opened."""
        self._write_config(resumed)
        epochs_done = resumed.epochs_done if resumed else 0
        with reported(self.jsonl):
            note = report.reconcile_metrics(self.jsonl, history, epochs_done)
        if note:
            self.echo(f"note: {note}")
        if self.cfg.tensorboard:  # a resumed run hides the events of the epochs it trains again
            self.open_tensorboard(epochs_done + 1 if resumed else None)

    def open_tensorboard(self, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.echo("note: tensorboard is not installed, so this run writes no TensorBoard events "
                      "(pip install 'adabits[tensorboard]', or tensorboard=false)")
        else:
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def rows_up_to(self, epochs_done: int) -> list[str]:
        """metrics.jsonl's whole rows of the epochs up to `epochs_done` (the record of an older checkpoint)."""
        lines = self.jsonl.read_text().splitlines(keepends=True) if self.jsonl.is_file() else []
        return [line for line in lines if line.endswith("\n")
                and (epoch := report.line_epoch(line)) is not None and epoch <= epochs_done]

    def epoch(self, epoch: int, lr: float, seconds: float, train: Metrics, val: Metrics, lines: list[str],
              best: dict[str, Any], bits_list: list[Any]) -> None:
        """Append the epoch's rows, print its table, rewrite the results."""
        with reported(self.jsonl, f"the checkpoint after epoch {epoch + 1} holds these rows, and a resume restores them"):
            self.append(epoch, lr, train, val, lines)
        self.echo(report.epoch_table(epoch, self.cfg.num_epochs, lr, seconds, train, val))
        self.results(best, bits_list)

    def append(self, epoch: int, lr: float, train: Metrics, val: Metrics, lines: list[str]) -> None:
        """The epoch's metrics.jsonl rows (`report.metrics_lines`), mirrored to TensorBoard when it is open."""
        with self.jsonl.open("a") as f:
            f.writelines(lines)
        if self.tb is not None:
            for phase, data in (("train", train), ("val", val)):
                for bits, metrics in data.items():
                    for key, value in metrics.items():
                        self.tb.add_scalar(f"{phase}_{key}/{bits_text(bits)}", value, epoch + 1)
            self.tb.add_scalar("lr", lr, epoch + 1)
            self.tb.flush()

    def results(self, best: dict[str, Any], bits_list: list[Any]) -> None:
        """results.md and accuracy_vs_bits.png of the best epoch (nothing before one)."""
        if not best["val"]:
            return
        title = f"{self.cfg.model} on {self.cfg.dataset}, bits {bits_list}"
        path = self.run_dir / "results.md"
        with reported(path), atomic_write(path, "w") as f:
            f.write(report.results_markdown(title, best["epoch"], best["val"]))
        plot = self.run_dir / "accuracy_vs_bits.png"
        with reported(plot):
            report.plot_accuracy(plot, title, best["val"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def _write_config(self, resumed: Resumed | None) -> None:
        """config.yaml: the config this run trains with, after comment lines naming each resume and its changes."""
        path = self.run_dir / "config.yaml"
        comments: list[str] = []
        if resumed is not None:
            if path.is_file():
                text = path.read_text().splitlines()
                comments = list(itertools.takewhile(lambda line: line.startswith("#"), text))
            changed = f"; changed: {', '.join(str(c) for c in resumed.changes)}" if resumed.changes else ""
            comments.append(f"# resumed from {resumed.path} after epoch {resumed.epochs_done}{changed}")
        with reported(path), atomic_write(path, "w") as f:
            f.write("".join(line + "\n" for line in comments) + self.cfg.to_yaml())
