"""Shared settings of the engine tests: a tiny ResNet on a tiny synthetic dataset (seconds per run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from adabits.engine import TrainConfig, build_config

TINY: dict[str, Any] = {
    "model": "resnet_cifar", "depth": 8,
    "dataset": "synthetic", "num_classes": 4, "in_chans": 1, "image_size": 8,
    "synthetic_train_size": 96, "synthetic_val_size": 40, "batch_size": 16,
    "bits_list": [8, 4], "weight_quant_scheme": "centered",
    "lr": 0.05, "lr_scheduler": "cos_annealing_iter", "num_epochs": 2,
    "progress": False, "random_seed": 7, "num_threads": 1,
}


def tiny_config(log_dir: Path, **changes: Any) -> TrainConfig:
    raw = {**TINY, "log_dir": str(log_dir), "run_name": "tiny", **changes}
    return build_config(raw)


def tiny_args(log_dir: Path, **changes: Any) -> list[str]:
    """The same settings as command-line overrides (for cli.main)."""
    raw = {**TINY, "log_dir": str(log_dir), "run_name": "tiny", **changes}
    return [f"{k}={_yaml(v)}" for k, v in raw.items()]


def _yaml(value: Any) -> str:
    import json
    return json.dumps(value)
