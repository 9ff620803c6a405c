"""Building the pieces of a run from a config: device, model (through adabits.create_model), weights."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adabits
from adabits.quant.bitwidth import Bits

from ..errors import CheckpointError, ConfigError
from ..weights import WeightsMismatch, load_weights
from .config import TrainConfig


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


def quant_options(cfg: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(adabits.QuantConfig)}


def model_kwargs(cfg: TrainConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    """The keyword arguments of `adabits.create_model(cfg.model, **kwargs)` (stored by exports)."""
    options: dict[str, Any] = {**quant_options(cfg), **cfg.model_options}
    if cfg.depth is not None and cfg.model == "resnet_cifar":
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
