"""The frozen float teacher of `distill: float`: the model `fp_pretrained_file` holds, at full precision.

It is the run's own architecture at 32 bits, without residual observers (a float model has none),
loaded strictly from the same file the run started from, in eval mode (its BN running statistics)
and without gradients. A checkpoint stores the digest of the teacher's weights rather than the
weights: a resumed run reloads the file and is refused if the file no longer holds that teacher.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import integrity
from ..quant.bitwidth import FULL_PRECISION
from .build import build_model, load_fp_start
from .config import TrainConfig
from .errors import CheckpointError

#: the checkpoint key of the teacher's digest
TEACHER_KEY = "float_teacher"


def build_float_teacher(cfg: TrainConfig, num_classes: int, in_chans: int, device: torch.device) -> nn.Module:
    """The frozen float model of `cfg.fp_pretrained_file`, on `device`."""
    if not cfg.fp_pretrained_file:
        raise ValueError("a float teacher needs fp_pretrained_file")
    float_cfg = cfg.model_copy(update={"bits_list": [FULL_PRECISION], "quantize_residual": False})
    teacher = build_model(float_cfg, num_classes, in_chans)
    load_fp_start(teacher, Path(cfg.fp_pretrained_file))
    teacher.to(device).eval().requires_grad_(False)
    if cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def digest(teacher: nn.Module) -> str:
    """One sha256 over every tensor of the teacher's state dict."""
    return integrity.text_digest(integrity.digests(teacher.state_dict()))


def check_same(teacher: nn.Module, stored: str | None, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume checkpoint `path` with a teacher other than the one it was trained with."""
    if stored is None:
        raise CheckpointError(f"{path} was not trained with distill: float (it records no float teacher); "
                              "resume it with the distill mode it was trained with")
    if digest(teacher) != stored:
        raise CheckpointError(f"{cfg.fp_pretrained_file} no longer holds the float teacher {path} was trained with "
                              "(its weights differ); restore that file to resume, or start a new run")
