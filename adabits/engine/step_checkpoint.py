"""Where a run stands inside an epoch, and what each process needs to continue from there bitwise.

With `checkpoint_every_steps: N`, latest_checkpoint.pt is also written after every N-th optimizer
step, not only at the end of an epoch; one resume path reads both. Such a checkpoint holds the
usual training state (weights, optimizer, scheduler: the lr of the next step) plus a `position`:
the epoch under way, the steps of it done, the lr it started with (its metrics row reports that)
and, per process, what lives outside the weights:

- the torch, Python and CUDA random states;
- the running sums of the epoch's training meters, so that its metrics cover every step once;
- the BN running statistics (each process keeps its own between evaluations, engine/distributed.py).

The data order needs nothing stored: a loader's epoch depends only on (seed, epoch), and
`iter_from(step)` skips the batches already trained without decoding them. The end-of-epoch
checkpoint carries a position too (step 0), for the random states of every process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..analysis.metrics import MeterSet
from ..errors import CheckpointError
from . import checkpoint

POSITION_KEY = "position"


@dataclass(frozen=True)
class Position:
    """After `step` optimizer steps of epoch `epoch` (0-based), which started at learning rate `lr`."""

    epoch: int
    step: int
    lr: float
    ranks: list[dict[str, Any]]  # per process, by rank: {"rng"}, and mid-epoch {"meters", "buffers"} too
    path: Path  # the checkpoint it was read from, for the messages

    def describe(self) -> str:
        return describe(self.epoch, self.step)


def describe(epoch: int, step: int) -> str:
    """'at step 3 of epoch 2' inside an epoch (0-based `epoch` under way), 'after epoch 1' at its end."""
    return f"at step {step} of epoch {epoch + 1}" if step else f"after epoch {epoch}"


def rank_state(model: nn.Module, meters: MeterSet | None) -> dict[str, Any]:
    """This process's random states and, mid-epoch (`meters` given), its meter sums (one row per
    bit-width) and buffers, on the CPU. At an epoch's end the buffers are averaged and in the weights."""
    state: dict[str, Any] = {"rng": checkpoint.rng_state()}
    if meters is not None:
        state["meters"] = torch.stack([m.sums for m in meters.meters.values()]).cpu()
        state["buffers"] = {name: buf.detach().cpu().clone() for name, buf in model.named_buffers()}
    return state


def gather(state: dict[str, Any], distributed: bool) -> list[dict[str, Any]]:
    """Every process's `state`, by rank (one all_gather_object; the state of this process alone otherwise)."""
    if not distributed:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def record(epoch: int, step: int, lr: float, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint entry of a position (plain containers and tensors: it loads with weights_only=True)."""
    return {POSITION_KEY: {"epoch": epoch, "step": step, "lr": lr, "ranks": ranks}}


def read(ckpt: dict[str, Any], path: Path, world_size: int, iters_per_epoch: int) -> Position | None:
    """The position in a checkpoint (None in one written without it), checked to fit this run.

    A mid-epoch position resumes only on the number of processes that wrote it: each process
    continues its own part of the epoch (its meters, BN statistics and random states).
    """
    entry = ckpt.get(POSITION_KEY)
    if entry is None:
        return None
    try:
        position = Position(int(entry["epoch"]), int(entry["step"]), float(entry["lr"]), list(entry["ranks"]), path)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable position in the epoch ({type(exc).__name__}: {exc})") from None
    if not position.ranks or not all(isinstance(r, dict) and "rng" in r for r in position.ranks):
        raise CheckpointError(f"{path}: its position holds no random states of the processes that wrote it")
    if position.epoch != int(ckpt["epoch"]):
        raise CheckpointError(f"{path}: its position ({position.describe()}) contradicts its epoch count {ckpt['epoch']}")
    if not position.step:
        return position
    written = len(position.ranks)
    if written != world_size:
        launch = ("in one process, without torchrun" if written == 1
                  else f"on {written} processes (e.g. torchrun --nproc_per_node={written})")
        raise CheckpointError(
            f"{path} was written at {position.describe()} by {written} process(es), but this run has {world_size}; "
            f"a mid-epoch checkpoint resumes on the same number of processes: start the run {launch}")
    if position.step >= iters_per_epoch:
        raise CheckpointError(f"{path} was written at {position.describe()}, but an epoch of this config has "
                              f"{iters_per_epoch} steps; resume with the config that wrote it")
    return position


def restore(position: Position, rank: int, world_size: int, model: nn.Module, meters: MeterSet) -> None:
    """Put process `rank`'s saved state back: buffers, meter sums, then the random states (last: nothing draws after).

    At an epoch's end (step 0) the weights and the averaged BN statistics are all there is besides
    the random states; on another number of processes those stay the checkpoint's main ones.
    """
    if not position.step:
        if len(position.ranks) == world_size:
            checkpoint.set_rng_state(position.ranks[rank]["rng"])
        return
    state, path = position.ranks[rank], position.path
    buffers = dict(model.named_buffers())
    saved = state.get("buffers")
    if not isinstance(saved, dict) or saved.keys() != buffers.keys():
        raise CheckpointError(f"{path}: the saved buffers of the epoch under way do not fit this model")
    sums = state.get("meters")
    if not isinstance(sums, torch.Tensor) or tuple(sums.shape) != (len(meters.meters), len(next(iter(meters.meters.values())).sums)):
        raise CheckpointError(f"{path}: the saved training meters of the epoch under way do not fit this config "
                              "(bits_list and topk must be those of the run that wrote it)")
    with torch.no_grad():
        for name, buf in buffers.items():
            buf.copy_(saved[name])
    for meter, row in zip(meters.meters.values(), sums):
        meter.sums = row.to(device=meter.sums.device, dtype=meter.sums.dtype).clone()
    checkpoint.set_rng_state(state["rng"])
