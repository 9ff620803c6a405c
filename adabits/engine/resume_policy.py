"""Which config keys may change when a run resumes, and which are refused: one table, one check.

A resumed run continues the checkpoint's model, optimizer, lr schedule and data order, so a key that
changes what the remaining epochs compute would make config.yaml describe a run that never happened.
Such keys are refused by name. Keys that change only how the run is computed or shown, where it is
written, or its length may change; the change is applied and noted (in the log and in config.yaml).
Every TrainConfig key is in RESUME_RULES (a test keeps it so); a key missing from it counts as fixed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import TrainConfig

MAY_CHANGE = "may change"
FIXED = "fixed"

_MODEL = "the model and its quantization"
_DATA = "the data the remaining epochs train on"
_OPTIM = "the optimizer and the lr schedule, whose state the checkpoint holds"
_OBJECTIVE = "the loss the remaining steps minimise"
_START = "the start of the run, which has happened"
_HOW = "how the run is computed (the same math)"
_SHOWN = "what the run shows or writes"
_WHERE = "where the run reads and writes"
_INERT = "nothing in training (accepted for the original's configs)"

#: key -> (MAY_CHANGE or FIXED, what the key is about)
RESUME_RULES: dict[str, tuple[str, str]] = {
    **{key: (FIXED, _MODEL) for key in (
        "model", "depth", "model_options", "num_classes", "in_chans", "image_size", "bits_list",
        "adaptive_training", "weight_only", "weight_quant_scheme", "weight_quantizer", "act_quant_scheme", "clamp", "rescale",
        "rescale_conv", "rescale_type", "switchbn", "switch_alpha", "stats_sharing", "pact_fp", "double_side",
        "quantize_residual",
        "normalize", "sync_bn")},
    **{key: (FIXED, _DATA) for key in (
        "dataset", "data_transforms", "data_loader", "drop_last", "batch_size", "crop_padding", "random_flip",
        "synthetic_train_size", "synthetic_val_size", "random_seed", "use_diff_seed", "max_iters_per_epoch")},
    **{key: (FIXED, _OPTIM) for key in (
        "optimizer", "lr", "momentum", "nesterov", "weight_decay", "optim_decay", "optim_eps", "label_smoothing",
        "lr_scheduler", "multistep_lr_milestones", "multistep_lr_gamma", "exp_decaying_lr_gamma",
        "exp_decaying_period", "warmup_epochs", "warmup_start")},
    **{key: (FIXED, _OBJECTIVE) for key in (
        "joint_loss", "distill", "distill_weight", "distill_temperature", "sandwich_middle", "mixed_assignments")},
    **{key: (FIXED, _START) for key in (
        "alpha_init", "alpha_init_batches", "pretrained_dir", "pretrained_file", "fp_pretrained_file",
        "fp_pretrained_format", "partial_load")},
    "num_epochs": (MAY_CHANGE, "the run's length; schedules that depend on it follow the new length from here on"),
    "topk": (MAY_CHANGE, "which top-k errors are reported"),
    "eval_batch_size": (MAY_CHANGE, "the batching of evaluation only"),
    **{key: (MAY_CHANGE, _HOW) for key in (
        "device", "compile", "compile_quantizers", "precision", "cudnn_benchmark", "channels_last", "num_threads", "data_loader_workers", "distributed", "dist_backend")},
    **{key: (MAY_CHANGE, _SHOWN) for key in (
        "log_every", "progress", "tensorboard", "test_only", "checkpoint_every_steps", "nonfinite")},
    **{key: (MAY_CHANGE, _WHERE) for key in ("log_dir", "run_name", "resume", "dataset_dir", "download")},
    **{key: (MAY_CHANGE, _INERT) for key in (
        "bn_calib", "reset_parameters", "distributed_all_reduce", "profiling", "profiling_only",
        "model_profiling_verbose", "num_gpus_per_job", "num_cpus_per_job", "memory_per_job", "gpu_type",
        "batch_size_per_gpu", "width_divisor", "min_width")},
}


@dataclass(frozen=True)
class Change:
    key: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.key} {self.before!r} -> {self.after!r}"


def _plain(value: Any) -> Any:
    """Tuples as lists, as YAML and JSON hold them: [4, 8] in a checkpoint equals (4, 8) in a config."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def changes(stored: Mapping[str, Any], cfg: TrainConfig) -> list[Change]:
    """The keys whose value differs from the stored config (a key it lacks had its default)."""
    now = cfg.model_dump()
    found = []
    for key, field in TrainConfig.model_fields.items():
        before = _plain(stored.get(key, field.default))
        after = _plain(now[key])
        if before != after:
            found.append(Change(key, before, after))
    return found


def check_resume(stored: Mapping[str, Any], cfg: TrainConfig, epochs_done: int, path: Path) -> list[Change]:
    """The changes allowed on resume from `path` (to apply and note); ConfigError naming the keys refused."""
    found = changes(stored, cfg)
    refused = [c for c in found if RESUME_RULES.get(c.key, (FIXED, ""))[0] == FIXED]
    if refused:
        shown = ", ".join(str(c) for c in refused)
        raise ConfigError(f"resuming {path}: this config changes {shown}; these keys fix what the remaining "
                          "epochs compute and cannot change on resume. Set them back to resume, or start a new "
                          "run with another run_name")
    if cfg.num_epochs < epochs_done:
        raise ConfigError(f"resuming {path}: num_epochs is {cfg.num_epochs} but the checkpoint has trained "
                          f"{epochs_done} epochs; set num_epochs={epochs_done} or more")
    return found
