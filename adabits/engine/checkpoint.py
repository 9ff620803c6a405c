"""The training state and its checkpoint format, in one module.

A checkpoint is written atomically (temp file + rename, adabits.atomic) with per-tensor digests
(adabits.integrity), and read with checks that name the problem in one line. `training_state` assembles
what a run saves; `restore` puts a run back where a checkpoint left it.

Positions inside an epoch.
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

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import integrity
from ..analysis.metrics import MeterSet
from ..atomic import atomic_write
from ..errors import CheckpointError
from ..quant.bitwidth import Bits, bits_text, parse_bits_list
from ..weights import load_weights, read_checkpoint
from . import resume_policy
from .config import TrainConfig

FORMAT = "adabits-checkpoint-v1"
#: the fields every training checkpoint of ours holds, with their types (what loading a model reads)
MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {"model_name": str, "bits_list": (list, tuple), "model": dict,
                                                   "epoch": int}
#: the further fields a run resumes from
RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {"optimizer": dict, "scheduler": dict, "rng": dict, "best": dict,
                                                    "config": dict}
#: the metrics.jsonl lines of every epoch up to the checkpoint's (a list of str; absent in older checkpoints)
METRICS_KEY = "metrics_rows"
#: fp16's loss scale (GradScaler state)
GRAD_SCALER_KEY = "grad_scaler"
#: the digest of the float teacher's weights (distill: float), so that a resume refuses another teacher file
TEACHER_KEY = "float_teacher"
#: the DataShape of the run (a dict), so that deploy commands build the model without reading the data
SHAPE_KEY = "data_shape"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through adabits.atomic: a crash never leaves half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(integrity.seal(obj), f)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """What a run saves besides its configuration: the parts it trains and where it stands."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    grad_scaler: torch.amp.GradScaler | None
    best: dict[str, Any]  # {"mean_top1_error", "epoch", "val"} of the best epoch so far
    history: list[str]  # metrics.jsonl lines so far
    teacher_digest: str | None = None

    def record(self, cfg: TrainConfig, bits_list: Sequence[Bits], epochs_done: int,
               shape: dict[str, int]) -> dict[str, Any]:
        """The checkpoint dict after `epochs_done` epochs (plain containers and tensors: it loads with weights_only)."""
        return {
            "format": FORMAT, "model_name": cfg.model, "bits_list": list(bits_list),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epochs_done, "best": self.best,
            "rng": rng_state(), "config": cfg.model_dump(), SHAPE_KEY: shape, METRICS_KEY: list(self.history),
            **({TEACHER_KEY: self.teacher_digest} if self.teacher_digest is not None else {}),
            **({GRAD_SCALER_KEY: self.grad_scaler.state_dict()} if self.grad_scaler is not None else {}),
        }


@dataclass(frozen=True)
class Resumed:
    """Where a restored run stands: epochs done, the config keys it changed, the position inside an epoch."""

    path: Path
    epochs_done: int
    changes: list[resume_policy.Change]
    history: list[str] | None  # None: an older checkpoint kept no metrics rows
    position: Position | None

    def describe(self) -> str:
        return self.position.describe() if self.position else f"after epoch {self.epochs_done}"


def restore(state: TrainingState, ckpt: dict[str, Any], path: Path, cfg: TrainConfig, *, world_size: int,
            iters_per_epoch: int) -> Resumed:
    """Put `state` back where checkpoint `ckpt` (read from `path`) left it; refused config changes stop here."""
    check_resumable(ckpt, path)
    epochs_done = ckpt["epoch"]
    changes = resume_policy.check_resume(ckpt["config"], cfg, epochs_done, path)
    load_weights(state.model, ckpt["model"], name=str(path))
    if state.teacher_digest is not None and ckpt.get(TEACHER_KEY) != state.teacher_digest:
        raise CheckpointError(f"{cfg.fp_pretrained_file} no longer holds the float teacher {path} was trained with "
                              "(its weights differ); restore that file to resume, or start a new run")
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
        if state.grad_scaler is not None and GRAD_SCALER_KEY in ckpt:  # else (fp32 or bf16 before): a fresh scale
            state.grad_scaler.load_state_dict(ckpt[GRAD_SCALER_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit this config ({exc})") from None
    try:
        set_rng_state(ckpt["rng"])
        best = dict(ckpt["best"])
        best["mean_top1_error"] = float(best["mean_top1_error"])
        best["epoch"], best["val"] = int(best["epoch"]), dict(best["val"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the random state or best-epoch record is damaged ({type(exc).__name__}: "
                              f"{exc}); resume from another checkpoint") from None
    state.best = best
    history = ckpt.get(METRICS_KEY)
    state.history = list(history or [])
    position = read_position(ckpt, path, world_size, iters_per_epoch)
    return Resumed(path, epochs_done, changes, history, position)


def read_training_checkpoint(path: Path, model_name: str, bits_list: Sequence[Bits]) -> dict[str, Any]:
    """A checkpoint of ours, checked to belong to this model and bits_list."""
    return check_training_checkpoint(read_checkpoint(path), path, model_name, bits_list)


def _same_bits(stored: Any, bits_list: Sequence[Bits]) -> bool:
    """bits_list equality of the normalised pairs: [8, [4, 8]] in a file equals [8, (4, 8)] in a config."""
    try:
        return parse_bits_list(stored) == parse_bits_list(bits_list)
    except (ValueError, TypeError):
        return False


def check_training_checkpoint(ckpt: dict[str, Any], path: Path, model_name: str,
                              bits_list: Sequence[Bits]) -> dict[str, Any]:
    """`ckpt` (read from `path`), checked to be ours and to belong to this model and bits_list."""
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of adabits (no '{FORMAT}' marker); "
                              "use pretrained_file for plain state dicts")
    _check_fields(ckpt, path, MODEL_FIELDS)
    if ckpt["model_name"] != model_name or not _same_bits(ckpt["bits_list"], bits_list):
        raise CheckpointError(
            f"{path} was written for model {ckpt['model_name']} with bits_list {bits_text(ckpt['bits_list'], 'config')}, "
            f"but this config builds {model_name} with bits_list {bits_text(bits_list, 'config')}. "
            "Use another log_dir or run_name for a different model, or delete that run folder to start over.")
    return ckpt


def check_resumable(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """A training checkpoint (checked by check_training_checkpoint) that also holds what a run resumes from."""
    _check_fields(ckpt, path, RESUME_FIELDS)
    rows = ckpt.get(METRICS_KEY)
    if rows is not None and not (isinstance(rows, list) and all(isinstance(r, str) for r in rows)):
        raise CheckpointError(f"{path}: the field '{METRICS_KEY}' is a {type(rows).__name__}, not a list of "
                              "metrics.jsonl lines; the checkpoint is damaged or was not written by adabits")
    return ckpt


def _check_fields(ckpt: dict[str, Any], path: Path, fields: dict[str, type | tuple[type, ...]]) -> None:
    """Each field present with its type: a damaged checkpoint is named, never a KeyError."""
    for name, kind in fields.items():
        if name not in ckpt:
            raise CheckpointError(f"{path} has the adabits checkpoint marker but no '{name}' field; "
                                  "the checkpoint is damaged or was not written by adabits")
        value = ckpt[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"{path}: the field '{name}' is a {type(value).__name__}, not a {wanted}; "
                                  "the checkpoint is damaged or was not written by adabits")


# ---------------------------------------------------------------- positions inside an epoch
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
    state: dict[str, Any] = {"rng": rng_state()}
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


def position_record(epoch: int, step: int, lr: float, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint entry of a position (plain containers and tensors: it loads with weights_only=True)."""
    return {POSITION_KEY: {"epoch": epoch, "step": step, "lr": lr, "ranks": ranks}}


def read_position(ckpt: dict[str, Any], path: Path, world_size: int, iters_per_epoch: int) -> Position | None:
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


def restore_position(position: Position, rank: int, world_size: int, model: nn.Module, meters: MeterSet) -> None:
    """Put process `rank`'s saved state back: buffers, meter sums, then the random states (last: nothing draws after).

    At an epoch's end (step 0) the weights and the averaged BN statistics are all there is besides
    the random states; on another number of processes those stay the checkpoint's main ones.
    """
    if not position.step:
        if len(position.ranks) == world_size:
            set_rng_state(position.ranks[rank]["rng"])
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
    set_rng_state(state["rng"])
