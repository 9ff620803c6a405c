"""Checksums of saved tensors: torch.load and safetensors read flipped bytes without complaint.

A digest is the sha256 of one tensor's dtype, shape and raw bytes. Checkpoints and packed files
store one digest per tensor beside the tensors, so that a mismatch names the tensor that changed.
`seal` and `verify` are the checkpoint side (adabits.engine.checkpoint calls them on save and
read); the packed format stores `digests` of its tensors in its metadata (adabits.export.packed).
This module imports only torch and adabits.errors, so every layer may use it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .errors import CheckpointError, PackedFormatError

#: the key of a checkpoint dict (or of a packed file's metadata) that holds the digests
CHECKSUM_KEY = "checksums"
#: the sections of a checkpoint dict that are sealed: the weights, and the optimizer state (cheap beside them)
SEALED_SECTIONS = ("model", "optimizer")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 over dtype, shape and bytes (the bytes as stored on the CPU, in row-major order)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return digest.hexdigest()


def text_digest(fields: Mapping[str, str]) -> str:
    """sha256 of string fields (a packed file's metadata), independent of their order."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()


def tensor_leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a nested dict/list (a state dict, an optimizer state), named by its dotted path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from tensor_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensor_leaves(value, f"{prefix}.{i}" if prefix else str(i))


def digests(obj: Any) -> dict[str, str]:
    """The digest of every tensor in `obj`, by dotted path, in the order the tensors come."""
    return {name: tensor_digest(t) for name, t in tensor_leaves(obj)}


def first_mismatch(obj: Any, expected: Mapping[str, str]) -> str | None:
    """The path of the first tensor whose digest differs from `expected` (or that is missing or extra); None if all agree."""
    actual = dict(tensor_leaves(obj))
    for name, digest in expected.items():
        if name not in actual or tensor_digest(actual[name]) != digest:
            return name
    return next((name for name in actual if name not in expected), None)


def seal(ckpt: Any) -> Any:
    """A copy of a checkpoint dict with the digests of its model and optimizer state; anything else as it is."""
    if not isinstance(ckpt, dict):
        return ckpt
    sections = {key: digests(ckpt[key]) for key in SEALED_SECTIONS if isinstance(ckpt.get(key), Mapping)}
    return {**ckpt, CHECKSUM_KEY: sections} if sections else ckpt


def verify(ckpt: Mapping[str, Any], path: object) -> None:
    """CheckpointError when a sealed section of `ckpt` (read from `path`) is not what was written.

    A file without digests (a checkpoint written before they were stored, a plain state dict of
    other code) is loaded with no check: there is nothing to compare against.
    """
    sections = ckpt.get(CHECKSUM_KEY)
    if sections is None or isinstance(sections, torch.Tensor):  # no digests, or a state dict's own tensor
        return
    if not isinstance(sections, Mapping) or not all(isinstance(v, Mapping) for v in sections.values()):
        raise CheckpointError(f"{path} is corrupt (its checksums are malformed); use another copy of it")
    for section, expected in sections.items():
        bad = first_mismatch(ckpt.get(section), expected)
        if bad is not None:
            raise CheckpointError(f"{path} is corrupt (checksum mismatch in {section} {bad}): it changed after it "
                                  "was written; use another copy of it")


def packed_checksums(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The metadata field a packed file stores: digests of its other metadata fields and of every tensor."""
    fields = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    return json.dumps({"metadata": text_digest(fields), "tensors": digests(dict(tensors))})


def verify_packed(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: object) -> None:
    """PackedFormatError when a packed file's metadata or tensors are not what was written.

    A file without the field (written before checksums were stored) is not checked.
    """
    text = metadata.get(CHECKSUM_KEY)
    if text is None:
        return
    try:
        stored = json.loads(text)
        meta_digest, tensor_digests = stored["metadata"], stored["tensors"]
        if not isinstance(meta_digest, str) or not isinstance(tensor_digests, dict):
            raise TypeError("wrong types")
    except (ValueError, KeyError, TypeError) as exc:
        raise PackedFormatError(f"{path} is corrupt (its checksums are malformed: {exc})") from None
    if text_digest({k: v for k, v in metadata.items() if k != CHECKSUM_KEY}) != meta_digest:
        raise PackedFormatError(f"{path} is corrupt (checksum mismatch in its metadata): it changed after it was "
                                "written; export it again")
    bad = first_mismatch(dict(tensors), tensor_digests)
    if bad is not None:
        raise PackedFormatError(f"{path} is corrupt (checksum mismatch in tensor {bad}): it changed after it was "
                                "written; export it again")
