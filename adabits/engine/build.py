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
from adabits.quant.bn_calibration import add_bits
from adabits.quant.convert import adapt_state_dict, spread_fp_state_dict

from ..errors import CheckpointError, ConfigError
from . import checkpoint, fit
from .config import TrainConfig
from .report import show_bits


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


def load_fp_start(model: nn.Module, path: Path, ckpt: dict[str, Any] | None = None, *,
                  partial: bool | None = None) -> str:
    """Full-precision weights into every bit-width (per-bit copies of BN and alpha); returns a note.
    A float checkpoint lacks the per-bit copies and maybe the alphas: those are filled, not missing.
    `partial`: the config's partial_load; None where a partial load is not offered (deploy commands)."""
    ckpt = checkpoint.read(path) if ckpt is None else ckpt
    sd = _own_keys(model, checkpoint.state_dict_of(ckpt), path)
    fit.refuse_other_bit_count(model, sd, path)
    return _load(model, sd, spread_fp_state_dict(model, sd), path, ckpt, partial,
                 f"loaded full-precision weights from {path}")


def load_weights_file(model: nn.Module, path: Path, ckpt: dict[str, Any] | None = None, *,
                      partial: bool | None = None) -> str:
    """A strict load of `path` (ours, a plain state dict or a foreign layout), calibrated bit-widths added;
    `partial` as for load_fp_start."""
    ckpt = checkpoint.read(path) if ckpt is None else ckpt
    calibrated = add_calibrated_bits(model, ckpt)
    sd = _own_keys(model, checkpoint.state_dict_of(ckpt), path)
    note = f"loaded weights from {path}" + (f" (calibrated bit-widths {show_bits(calibrated)})" if calibrated else "")
    return _load(model, sd, adapt_state_dict(model, sd), path, ckpt, partial, note)


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """The start of a training run: fp_pretrained_file, then pretrained_file, as set; returns notes.
    Each must fit the whole model unless `partial_load`."""
    notes = []
    if cfg.fp_pretrained_file:
        notes.append(load_fp_start(model, Path(cfg.fp_pretrained_file), partial=cfg.partial_load))
    path = pretrained_path(cfg)
    if path is not None:
        notes.append(load_weights_file(model, path, partial=cfg.partial_load))
    return notes


def _load(model: nn.Module, own: dict[str, torch.Tensor], adapted: dict[str, torch.Tensor], path: Path,
          ckpt: dict[str, Any], partial: bool | None, note: str) -> str:
    """Load `adapted` (`own` adapted to the model's layers) if it fits the whole model, or, when
    `partial`, the keys that fit; anything else is a CheckpointError (`fit.refuse_misfit`, which
    suggests partial_load where the caller offers it: `partial` is False, not None)."""
    result = fit.compare(model, adapted)
    if not result.complete and (not partial or result.shares_nothing):
        fit.refuse_misfit(model, result, path, fit.written_for(model, own, ckpt), offer_partial=partial is False)
    model.load_state_dict(result.loadable, strict=result.complete)
    return note if result.complete else f"{note} ({fit.partial_note(result)})"


def _own_keys(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Rename a foreign layout (wrapper prefixes, the original code's models) to the model's names."""
    try:
        return remap_state_dict(model, sd)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
