"""Building the pieces of a run from a config: device, model (through adabits.create_model), weights."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adabits
from adabits.models import remap_state_dict
from adabits.quant.bitwidth import Bits
from adabits.quant.calibrate import add_bits

from . import checkpoint
from .config import TrainConfig
from .errors import CheckpointError, ConfigError
from .report import show_bits


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested, but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


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


def add_calibrated_bits(model: nn.Module, ckpt: dict[str, Any]) -> list[Any]:
    """Give `model` the per-bit BN and alpha entries of the bit-widths calibrated into `ckpt`
    (`adabits calibrate`), so that the checkpoint loads strictly; returns those bit-widths."""
    calibrated = list(ckpt.get("calibrated_bits", []))
    have = adabits.get_bits_list(model)
    for bits in calibrated:
        if bits not in have:
            add_bits(model, bits)
    return calibrated


def pretrained_path(cfg: TrainConfig) -> Path | None:
    """pretrained_file, relative to pretrained_dir when that is set."""
    if not cfg.pretrained_file:
        return None
    path = Path(cfg.pretrained_file)
    return Path(cfg.pretrained_dir) / path if cfg.pretrained_dir and not path.is_absolute() else path


def load_fp_start(model: nn.Module, path: Path, ckpt: dict[str, Any] | None = None) -> str:
    """Full-precision weights into every bit-width (per-bit copies of BN and alpha); returns a note."""
    ckpt = checkpoint.read(path) if ckpt is None else ckpt
    sd = _own_keys(model, checkpoint.state_dict_of(ckpt), path)
    missing, unexpected = adabits.load_fp_state_dict(model, sd)
    if len(missing) == len(model.state_dict()):
        raise CheckpointError(f"{path} shares no parameter names with model {type(model).__name__}")
    return f"loaded full-precision weights from {path} ({len(missing)} missing, {len(unexpected)} unexpected keys)"


def load_weights_file(model: nn.Module, path: Path, ckpt: dict[str, Any] | None = None) -> str:
    """A strict load of `path` (ours, a plain state dict or a foreign layout), calibrated bit-widths added."""
    ckpt = checkpoint.read(path) if ckpt is None else ckpt
    calibrated = add_calibrated_bits(model, ckpt)
    checkpoint.load_weights(model, _own_keys(model, checkpoint.state_dict_of(ckpt), path), path)
    return f"loaded weights from {path}" + (f" (calibrated bit-widths {show_bits(calibrated)})" if calibrated else "")


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """The start of a training run: fp_pretrained_file, then pretrained_file (strict), as set; returns notes."""
    notes = []
    if cfg.fp_pretrained_file:
        notes.append(load_fp_start(model, Path(cfg.fp_pretrained_file)))
    path = pretrained_path(cfg)
    if path is not None:
        notes.append(load_weights_file(model, path))
    return notes


def _own_keys(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Rename a foreign layout (torchvision, the original code's MobileNets) to the model's names."""
    try:
        return remap_state_dict(model, sd)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
