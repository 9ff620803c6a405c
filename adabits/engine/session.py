"""What a training process holds besides the model: its place among the processes, and the run folder's lock.

Under torchrun (or `distributed: true`) the process joins the group after checking what it can alone,
then checks that every rank runs the same config. Decisions that read the file system (which checkpoint
to resume from) are made by rank 0 and broadcast, so that every rank acts on the same answer, or raises
the same error. A training run locks its folder (engine/run_folder.py) before it writes anything.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import CheckpointError, UserError
from . import distributed, run_folder
from .config import TrainConfig
from .loading import resume_path

T = TypeVar("T")
Printer = Callable[[str], None]


def silent(_msg: str) -> None:
    pass


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class StopRequest:
    """A scheduler's stop signal (SIGTERM, SLURM's SIGUSR1), noted by the CLI's handler; a training loop that
    `polled` it saves the step under way and stops, anything else is interrupted at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.polled = False


class RunSession:
    """One process of a run: rank, device, the printer (rank 0 alone prints), the folder lock."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, echo: Printer, dist_env: distributed.DistEnv | None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.dist = dist_env if dist_env is not None else distributed.detect(cfg.distributed)
        self.echo = echo if self.dist.is_main else silent
        self._lock: run_folder.RunLock | None = None

    def join(self, device: torch.device) -> None:
        """Join the process group (when distributed), then lock the run folder (a training run)."""
        if self.dist.enabled:
            self._join_process_group(device)
        if not self.cfg.test_only:
            self.on_main(self._claim_run_folder)

    def on_main(self, decide: Callable[[], T]) -> T:
        """`decide()` run by rank 0 alone; its result, or the UserError it raised, on every rank."""
        if not self.dist.enabled:
            return decide()
        outcome: tuple[T | None, UserError | None] = (None, None)
        if self.dist.is_main:
            try:
                outcome = (decide(), None)
            except UserError as exc:
                outcome = (None, exc)
        result, error = distributed.broadcast_from_main(outcome if self.dist.is_main else None)
        if error is not None:
            raise error
        return result  # type: ignore[return-value]  # None only where decide() returned None

    def on_any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on one (one all-reduce when distributed)."""
        if not self.dist.enabled:
            return flag
        return bool(distributed.all_reduce_sum_(torch.tensor([float(flag)], device=device)).item() > 0)

    def resume_path(self) -> Path | None:
        """The checkpoint to resume from, decided by rank 0 and the same on every rank (or its error, on every rank):
        `resume`, else the run folder's latest_checkpoint.pt; refused where the folder holds records but none."""
        def decide() -> str | None:
            named = resume_path(self.cfg)
            if named is not None:
                note = run_folder.check_resume_into(self.run_dir, named)
                if note:
                    self.echo(f"note: {note}")
                return str(named)
            previous = run_folder.previous_checkpoint(self.run_dir)
            return None if previous is None else str(previous)

        path = self.on_main(decide)
        if path is not None and not Path(path).is_file():
            raise CheckpointError(f"rank {self.dist.rank} cannot read {path}, the checkpoint rank 0 resumes from; "
                                  "log_dir must be storage that every node shares")
        return Path(path) if path else None

    def release(self) -> None:
        """Release the run folder's lock (safe to call twice)."""
        if self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        """Release the run folder and leave the process group (when one was joined); safe to call twice."""
        self.release()
        if self.dist.enabled:
            distributed.destroy_process_group()

    def _claim_run_folder(self) -> None:
        """Lock the run folder for this run, then remove the temp files an earlier, killed save left there."""
        self._lock = run_folder.RunLock(self.run_dir).acquire()
        removed = run_folder.remove_stale_temps(self.run_dir)
        if removed:
            self.echo(f"note: removed {len(removed)} temp file(s) of an interrupted save in {self.run_dir}: "
                      f"{', '.join(removed)}")

    def _join_process_group(self, device: torch.device) -> None:
        """Check what can be checked alone, join the group, then check that every rank runs this config."""
        cfg = self.cfg
        distributed.per_process_batch(cfg.batch_size, self.dist.world_size)
        backend = distributed.resolve_backend(cfg.dist_backend, device)
        distributed.init_process_group(self.dist, backend)
        distributed.check_same_config(cfg.model_dump(), self.dist)
        self.echo(f"distributed: {self.dist.world_size} processes, backend {backend}, "
                  f"global batch {cfg.batch_size} ({cfg.batch_size // self.dist.world_size} per process)")
        note = distributed.restart_note()
        if note:
            self.echo(f"note: {note}")
