"""A trained model for evaluation and deployment: which file holds its weights, and the model built for it.

`weights_source` is the one place that decides which file `test`, `export`, `calibrate` and
`profile` load; `load_trained` builds the model and loads that file with no optimizer, no
scheduler and no dataset: the data shape comes from the config, else from the checkpoint (which
training stores), else from the dataset's registered metadata (`adabits.data.dataset_shape`).

A missing trained checkpoint is an error. A stage-2 config still names its float starting point
(fp_pretrained_file); that file is loaded only when asked for by name (`from_start=True`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import adabits

from ..data import DataShape, dataset_shape
from ..errors import CheckpointError
from ..quant.bitwidth import Bits
from ..weights import load_weights, read_checkpoint
from . import checkpoint, run_folder
from .build import build_model, load_start, pretrained_path
from .checkpoint import SHAPE_KEY
from .config import TrainConfig

#: where the weights come from: pretrained_file, the run's own checkpoint, the fp start, or none at all
WeightsKind = Literal["pretrained", "run", "start", "none"]


def run_dir(cfg: TrainConfig) -> Path:
    """The run folder: log_dir/run_name."""
    return Path(cfg.log_dir) / (cfg.run_name or "run")


def resume_path(cfg: TrainConfig) -> Path | None:
    """The checkpoint `resume` names (a file, or a run folder's latest_checkpoint.pt); None when unset."""
    if not cfg.resume:
        return None
    path = Path(cfg.resume)
    path = path / run_folder.LATEST if path.is_dir() else path
    if path.is_dir():
        raise CheckpointError(f"resume: {path} is a folder, not a checkpoint; name a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"resume: checkpoint not found: {path}")
    return path


@dataclass(frozen=True)
class WeightsSource:
    kind: WeightsKind
    path: Path | None = None

    @property
    def note(self) -> str | None:
        """What the user must know about this choice (only the fp start needs saying)."""
        if self.kind == "start":
            return (f"from_start=true: using the full-precision start {self.path} (fp_pretrained_file), "
                    "not trained weights")
        return None


def weights_source(cfg: TrainConfig, *, from_start: bool = False, required: bool = True) -> WeightsSource:
    """The file holding the weights to evaluate or deploy.

    In order: the fp start when `from_start` (it must be set), pretrained_file, `resume` (a file,
    or a run folder's latest_checkpoint.pt), the run's best_model.pt. With none of them a
    CheckpointError names the path and the remedies, unless `required` is False (kind "none").
    """
    if from_start:
        if not cfg.fp_pretrained_file:
            raise CheckpointError("from_start=true loads fp_pretrained_file, which this config does not set")
        return WeightsSource("start", Path(cfg.fp_pretrained_file))
    pretrained = pretrained_path(cfg)
    if pretrained is not None:
        return WeightsSource("pretrained", pretrained)
    resume = resume_path(cfg)
    if resume is not None:
        return WeightsSource("run", resume)
    best = run_dir(cfg) / run_folder.BEST
    if best.is_file():
        return WeightsSource("run", best)
    if not required:
        return WeightsSource("none")
    start = (f"; to use the full-precision start {cfg.fp_pretrained_file} on purpose, add from_start=true"
             if cfg.fp_pretrained_file else "")
    raise CheckpointError(f"no trained checkpoint at {best}: train first (adabits train with this config), "
                          f"or name the weights with pretrained_file=PATH{start}")


def shape_record(shape: DataShape) -> dict[str, int]:
    """The DataShape as a checkpoint stores it (SHAPE_KEY)."""
    return dataclasses.asdict(shape)


def model_shape(cfg: TrainConfig, ckpt: dict[str, Any] | None = None) -> DataShape:
    """The data shape a model is built for: the config's keys, else the checkpoint's, else the dataset's metadata."""
    stored = (ckpt or {}).get(SHAPE_KEY)
    keys = [f.name for f in dataclasses.fields(DataShape)]
    if isinstance(stored, dict) and all(isinstance(stored.get(k), int) for k in keys):
        return DataShape(cfg.num_classes or stored["num_classes"], cfg.in_chans or stored["in_chans"],
                         cfg.image_size or stored["image_size"])
    return dataset_shape(cfg)


def apply_weights(model: nn.Module, source: WeightsSource, cfg: TrainConfig,
                  ckpt: dict[str, Any] | None = None) -> str | None:
    """Load `source` into `model` (`ckpt`: the file, if already read); returns a note, None for kind "none".

    The run's own checkpoints must belong to this model and bits_list; pretrained_file may be any
    state dict (calibrated bit-widths are added to the model first); the fp start fills every bit-width.
    """
    if source.kind == "none" or source.path is None:
        return None
    if source.kind == "start":
        return load_start(model, source.path, ckpt, from_float=True)
    if source.kind == "pretrained":
        return load_start(model, source.path, ckpt, from_float=False)
    ckpt = read_checkpoint(source.path) if ckpt is None else ckpt
    checkpoint.check_training_checkpoint(ckpt, source.path, cfg.model, cfg.train_bits)
    load_weights(model, ckpt["model"], name=str(source.path))
    return f"loaded {source.path} (epoch {ckpt['epoch']})"


@dataclass
class TrainedModel:
    """A model with its weights loaded, and what deploy commands need to know about it."""

    model: nn.Module
    shape: DataShape
    source: WeightsSource
    notes: list[str]
    checkpoint: dict[str, Any] | None  # the file read, when there was one

    @property
    def bits_list(self) -> list[Bits]:
        """The model's bit-widths, calibrated ones included."""
        return adabits.get_bits_list(self.model)


def load_trained(cfg: TrainConfig, *, from_start: bool = False, require_weights: bool = True,
                 device: torch.device | str = "cpu") -> TrainedModel:
    """Build the config's model and load its trained weights (see `weights_source`), in eval mode.

    Reads no dataset when the config or the checkpoint gives the shape; never builds an optimizer.
    """
    source = weights_source(cfg, from_start=from_start, required=require_weights)
    ckpt = read_checkpoint(source.path) if source.path is not None else None
    shape = model_shape(cfg, ckpt)
    model = build_model(cfg, shape.num_classes, shape.in_chans)
    note = apply_weights(model, source, cfg, ckpt)
    model.to(device).eval()
    return TrainedModel(model, shape, source, [n for n in (source.note, note) if n], ckpt)
