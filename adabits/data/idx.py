"""The IDX format of MNIST-style datasets (optionally gzipped), read straight into uint8 tensors and written back."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from .base import DataError

_UBYTE = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """Parse one IDX file; raise DataError (naming the file) when it is truncated or not IDX."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if len(raw) != header + count:
        raise DataError(f"{path} is truncated or corrupt: expected {header + count} bytes, found {len(raw)}")
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(dims)


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzipped when the name ends in .gz), e.g. a subset of a dataset."""
    if array.dtype != torch.uint8:
        raise ValueError(f"write_idx stores unsigned bytes, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.contiguous().numpy().tobytes())
