"""Checkpoints: written atomically (temp file + rename), read with checks that name the problem."""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import integrity
from ..atomic import atomic_write
from ..errors import CheckpointError
from ..quant.bitwidth import Bits, parse_bits_list
from ..weights import read_checkpoint
from .report import show_bits

FORMAT = "adabits-checkpoint-v1"
#: the fields every training checkpoint of ours holds, with their types (what loading a model reads)
MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {"model_name": str, "bits_list": (list, tuple), "model": dict,
                                                   "epoch": int}
#: the further fields a run resumes from
RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {"optimizer": dict, "scheduler": dict, "rng": dict, "best": dict,
                                                    "config": dict}
#: the metrics.jsonl lines of every epoch up to the checkpoint's (a list of str; absent in older checkpoints)
METRICS_KEY = "metrics_rows"


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
            f"{path} was written for model {ckpt['model_name']} with bits_list {show_bits(ckpt['bits_list'])}, "
            f"but this config builds {model_name} with bits_list {show_bits(bits_list)}. "
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
