"""Reading a weights file, and finding the state dict inside what it holds (the pipeline's first stage).

`read_checkpoint` takes anything `torch.save` wrote (tensors and plain containers only: a file never
runs code), checks the per-tensor digests of ours (adabits.integrity), and names the file in its
one-line error. `state_dict_of` is the "clean" stage: the weights of a checkpoint of ours, a
`{"model": ...}` or `{"state_dict": ...}` dict, or a plain state dict, with the prefixes that wrappers
(DataParallel's `module.`, torch.compile's `_orig_mod.`) put in front of every key removed.
"""
from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .. import integrity
from ..errors import CheckpointError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: str | PathLike[str]) -> dict[str, Any]:
    """The dict a torch.save file holds; CheckpointError (naming the file) if it is missing, unreadable or altered."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler meets damaged bytes with any error type (IndexError, TypeError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or not written by torch.save): {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    integrity.verify(obj, path)
    return obj


def strip_wrappers(key: str) -> str:
    """`key` without any DataParallel / torch.compile prefixes (they may nest: `module._orig_mod.`)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def state_dict_of(obj: Mapping[str, Any], where: str = "the file") -> dict[str, torch.Tensor]:
    """The model weights in `obj`, wrapper prefixes stripped; CheckpointError when it holds no state dict."""
    inner = obj.get("model") if isinstance(obj.get("model"), Mapping) else obj.get("state_dict", obj)
    if not isinstance(inner, Mapping):
        raise CheckpointError(f"{where} holds no model state dict (expected tensors by parameter name)")
    state: dict[str, Any] = {}
    for key, value in inner.items():
        own = strip_wrappers(str(key))
        if own in state:
            raise CheckpointError(f"{where}: checkpoint keys collide once wrapper prefixes are stripped: two keys "
                                  f"become {own!r} (one is {key!r})")
        state[own] = value
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} holds no model state dict (expected tensors by parameter name)")
    return state
