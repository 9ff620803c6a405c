"""Reader for the IDX format of MNIST-style datasets (optionally gzipped), straight into uint8 tensors."""
from __future__ import annotations

import gzip
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
