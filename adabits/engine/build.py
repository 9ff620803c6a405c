"""Building the pieces of a run from a config: device, model (through adabits.create_model), data, the start weights."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import adabits

from ..data import DataShape, Loaders, build_loaders
from ..errors import CheckpointError, ConfigError, UserError
from ..joint.objective import IN_STEP_TEACHERS
from ..joint.sampling import StepBits
from ..quant.bitwidth import Bits
from ..quant.clipping import init_clipping_levels
from ..weights import WeightsMismatch, load_weights
from . import distributed, precision
from .config import TrainConfig
from .distributed import DistEnv

if TYPE_CHECKING:
    from .teacher import FloatTeacher


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested, but CUDA is not available here; use device=cpu or device=auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps requested, but this PyTorch build or machine has no MPS; use device=cpu or device=auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name} requested, but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def model_bits(cfg: TrainConfig) -> list[Bits]:
    """The bits_list the model is built with: all of it for adaptive training, else only the one trained."""
    return cfg.train_bits


def model_kwargs(cfg: TrainConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    """The keyword arguments of `adabits.create_model(cfg.model, **kwargs)` (stored by exports)."""
    options: dict[str, Any] = {**dataclasses.asdict(cfg.quant), **cfg.model_options}
    if cfg.depth is not None:  # a model option the config names at the top level, as the original's configs do
        options["depth"] = cfg.depth
    return {"bits_list": model_bits(cfg), "num_classes": num_classes, "in_chans": in_chans, **options}


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The config's model; a ValueError of the model layer (an option the constructor's signature does
    not have, a bad value) is a ConfigError. Anything else, a TypeError included, is a bug and keeps
    its traceback."""
    try:
        return adabits.create_model(cfg.model, **model_kwargs(cfg, num_classes, in_chans))
    except ValueError as exc:
        raise ConfigError(f"cannot build model {cfg.model}: {exc}") from None


def pretrained_path(cfg: TrainConfig) -> Path | None:
    """pretrained_file, relative to pretrained_dir when that is set."""
    if not cfg.pretrained_file:
        return None
    path = Path(cfg.pretrained_file)
    return Path(cfg.pretrained_dir) / path if cfg.pretrained_dir and not path.is_absolute() else path


def load_start(model: nn.Module, path: Path, ckpt: dict[str, Any] | None = None, *, from_float: bool,
               partial: bool | None = None) -> str:
    """`adabits.load_weights` of a config's weights file (`ckpt`: the file, if already read); returns its note.
    `partial`: the config's partial_load, None where a run offers none (the deploy commands), so that a
    misfit's message suggests partial_load only where it would help."""
    try:
        report = load_weights(model, path if ckpt is None else ckpt, from_float=from_float, partial=bool(partial),
                              name=str(path))
    except WeightsMismatch as exc:
        if partial is False and exc.partial_possible:
            raise CheckpointError(f"{exc}; set partial_load: true to load only the keys that fit") from None
        raise
    return str(report)


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """The start of a training run: fp_pretrained_file, then pretrained_file, as set; returns notes.
    Each must fit the whole model unless `partial_load`."""
    notes = []
    if cfg.fp_pretrained_file:
        notes.append(load_start(model, Path(cfg.fp_pretrained_file), from_float=True, partial=cfg.partial_load))
    path = pretrained_path(cfg)
    if path is not None:
        notes.append(load_start(model, path, from_float=False, partial=cfg.partial_load))
    return notes


@dataclass
class RunParts:
    """What a training (or distributed test) run is built from, before any weights are chosen for training."""

    loaders: Loaders
    shape: DataShape
    model: nn.Module
    criterion: nn.Module
    step_bits: StepBits
    grad_scaler: torch.amp.GradScaler | None
    teacher: "FloatTeacher | None"
    iters_per_epoch: int


def build_parts(cfg: TrainConfig, device: torch.device, dist: DistEnv) -> RunParts:
    """Data, model (on `device`), loss, the step's bit-widths, fp16's GradScaler and the float teacher of a
    training run, in the order that fails earliest on bad input."""
    torch.manual_seed(cfg.random_seed + dist.rank if cfg.use_diff_seed else cfg.random_seed)
    loaders = build_loaders(cfg, device, dist.rank, dist.world_size)
    if cfg.num_classes is not None and cfg.num_classes < loaders.num_classes:
        raise UserError(f"num_classes {cfg.num_classes} is smaller than the {loaders.num_classes} "
                        f"classes of dataset {cfg.dataset}")
    shape = DataShape(cfg.num_classes or loaders.num_classes, cfg.in_chans or loaders.in_chans, loaders.image_size)
    model = build_model(cfg, shape.num_classes, shape.in_chans).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to takes it
    if cfg.compile_quantizers:
        adabits.compile_quantizers(model)
    if cfg.sync_bn and dist.enabled:
        model = distributed.convert_sync_bn(model, device)
    teacher = None
    if cfg.distill == "float":
        from .teacher import build_float_teacher  # (the teacher is built with this module)

        teacher = build_float_teacher(cfg, shape.num_classes, shape.in_chans, device)
    iters = len(loaders.train) if not cfg.max_iters_per_epoch else min(len(loaders.train), cfg.max_iters_per_epoch)
    return RunParts(loaders, shape, model, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                    StepBits(cfg.train_bits, cfg.sandwich_middle, cfg.random_seed, cfg.distill in IN_STEP_TEACHERS),
                    precision.grad_scaler(cfg.precision, device), teacher, iters)


def start_weights(model: nn.Module, cfg: TrainConfig, train: Iterable[Any], echo: Callable[[str], None]) -> None:
    """A fresh run's start: fp_pretrained_file / pretrained_file, then the clipping levels chosen from the first
    `alpha_init_batches` training batches (`alpha_init: mse`), or every bit-width calibrated on them (`calibrate`)."""
    for note in load_pretrained(model, cfg):
        echo(note)
    if cfg.alpha_init not in ("mse", "calibrate"):
        return
    batches = [images for images, _ in itertools.islice(iter(train), cfg.alpha_init_batches)]
    if cfg.alpha_init == "calibrate":
        echo(str(adabits.calibrate(model, batches)))
        return
    levels = init_clipping_levels(model, torch.cat(batches))
    summary = ", ".join(f"{bits}: {min(v.values()):.2f}-{max(v.values()):.2f}" for bits, v in levels.items() if v)
    echo(f"clipping levels chosen from {len(batches)} training batches (alpha range per bits: {summary})")
