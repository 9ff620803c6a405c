"""The frozen float teacher of `distill: float`: the model `fp_pretrained_file` holds, at full precision.

It is built with the model and quantization keys the file's own config recorded (a file without one,
e.g. torchvision weights, takes the run's), at 32 bits and without residual observers (a float
model has none); loaded strictly, in eval mode (its BN running statistics) and without gradients.
A checkpoint stores a digest of the file's weights rather than the weights: a resumed run reloads
the file and is refused if it no longer holds those weights.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import integrity
from ..quant.bitwidth import FULL_PRECISION
from ..quant.config import QuantConfig
from ..weights import read_checkpoint, state_dict_of
from .build import build_model, load_start
from .config import TrainConfig

#: the keys of the file's own config that decide what its float model computes
_MODEL_KEYS = ("model", "depth", "model_options", "normalize", *(f.name for f in dataclasses.fields(QuantConfig)))


@dataclass(frozen=True)
class FloatTeacher:
    model: nn.Module
    digest: str  # of the file's weights, as a checkpoint stores it


def build_float_teacher(cfg: TrainConfig, num_classes: int, in_chans: int, device: torch.device) -> FloatTeacher:
    """The frozen float model of `cfg.fp_pretrained_file`, on `device`."""
    if not cfg.fp_pretrained_file:
        raise ValueError("a float teacher needs fp_pretrained_file")
    path = Path(cfg.fp_pretrained_file)
    ckpt = read_checkpoint(path)
    config = ckpt.get("config")
    recorded: dict[str, Any] = config if isinstance(config, dict) else {}
    own = {key: recorded[key] for key in _MODEL_KEYS if key in recorded}
    float_cfg = cfg.model_copy(update={**own, "bits_list": [FULL_PRECISION], "quantize_residual": False})
    model = build_model(float_cfg, num_classes, in_chans)
    load_start(model, path, ckpt, from_float=True)
    model.to(device).eval().requires_grad_(False)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to takes it
    digest = integrity.text_digest(integrity.digests(state_dict_of(ckpt)))
    return FloatTeacher(model, digest)
