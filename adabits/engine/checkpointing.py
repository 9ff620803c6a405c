"""When and where a run's checkpoints are written, and which one is the last valid one.

`best_model.pt` after an epoch that improved on it (rank 0), `latest_checkpoint.pt` after every epoch and, with
`checkpoint_every_steps` or at a scheduler's signal, at the step under way (every rank takes part: its random
states, and mid-epoch its meters and buffers, are gathered; rank 0 writes, atomically). Before every write the
non-finite guard is read, so that no checkpoint ever holds the weights of a bad step. A refused write is one
line that says which checkpoint still holds (`write_errors.reported`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..analysis.metrics import MeterSet
from . import checkpoint, run_folder
from .write_errors import reported


class RunCheckpoints:
    """The checkpoints of one run folder; `last` is the last valid one and where it stands, for the messages."""

    def __init__(self, run_dir: Path, is_main: bool, distributed: bool, model: nn.Module,
                 record: Callable[[int], dict[str, Any]], before_write: Callable[[str], None]) -> None:
        """`record(epochs_done)` builds the checkpoint dict; `before_write(last)` raises when the weights must not
        be written (the non-finite guard), naming the last valid checkpoint."""
        self.run_dir, self.is_main, self.distributed = run_dir, is_main, distributed
        self.record, self.model, self.before_write = record, model, before_write
        self.last: tuple[Path, str] | None = None

    def describe_last(self, none: str) -> str:
        return f"{self.last[0]} ({self.last[1]})" if self.last else none

    def latest(self, epoch: int, step: int, lr: float, meters: MeterSet | None, record: dict[str, Any] | None = None
               ) -> None:
        """latest_checkpoint.pt at `step` of epoch `epoch` (step 0: its start, after the epochs before it); `lr` is
        the one the epoch started with, `record` the checkpoint dict when the caller has already built it."""
        self.before_write(self.describe_last("none (no checkpoint was written yet)"))
        ranks = checkpoint.gather(checkpoint.rank_state(self.model, meters), self.distributed)
        path = self.run_dir / run_folder.LATEST
        if self.is_main:
            kept = f"{self.last[0]} still holds the checkpoint {self.last[1]}" if self.last else "no checkpoint was written yet"
            with reported(path, kept):
                base = self.record(epoch) if record is None else record
                checkpoint.save_atomic({**base, **checkpoint.position_record(epoch, step, lr, ranks)}, path)
        self.last = (path, checkpoint.describe(epoch, step))

    def epoch_end(self, epoch: int, improved: bool, next_lr: float) -> None:
        """best_model.pt (rank 0, when the epoch improved on it), then latest_checkpoint.pt, from one record."""
        self.before_write(self.describe_last("none (no checkpoint was written yet)"))
        record = self.record(epoch + 1) if self.is_main else None
        if improved and record is not None:
            with reported(self.run_dir / run_folder.BEST, "the previous best_model.pt is unchanged"):
                checkpoint.save_atomic(record, self.run_dir / run_folder.BEST)
        self.latest(epoch + 1, 0, next_lr, None, record)
