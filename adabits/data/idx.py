"""The IDX format of MNIST-style datasets (optionally gzipped), read straight into uint8 tensors and written back."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Protocol

import torch

from .base import DataError, described

_UBYTE = 0x08
#: how much of the data is read at a time: memory follows the bytes the file really holds, not its header's claim
_CHUNK = 1 << 24


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_up_to(f: _Readable, count: int) -> bytearray:
    """At most `count` bytes of `f`, fewer when it ends first (never a buffer of the header's size up front)."""
    data = bytearray()
    while len(data) < count:
        chunk = f.read(min(count - len(data), _CHUNK))
        if not chunk:
            break
        data += chunk
    return data


def read_idx(path: Path) -> torch.Tensor:
    """Parse one IDX file of unsigned bytes; DataError naming the file when it is not one, or is cut or padded.

    The header is read first and the data only up to the size it declares (plus one byte, to see a
    padded file), so a huge file or a gzip bomb is refused without being read whole. A damaged gzip
    stream is a DataError too (zlib's own error type included).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != _UBYTE:
                raise DataError(f"{path} is not an IDX file of unsigned bytes (it starts with {magic.hex() or 'nothing'}, "
                                f"expected 000008 and the number of dimensions)")
            ndim = magic[3]
            head = f.read(4 * ndim)
            if len(head) < 4 * ndim:
                raise DataError(f"{path} is truncated: its header declares {ndim} dimensions, the file ends in their sizes")
            dims = struct.unpack(f">{ndim}I", head)
            count = math.prod(dims)
            data = _read_up_to(f, count)
            if len(data) < count:
                raise DataError(f"{path} is truncated: its header declares {'x'.join(map(str, dims))} "
                                f"({count} bytes of data), the file holds {len(data)}")
            if f.read(1):
                raise DataError(f"{path} is corrupt: it holds more than the {count} bytes of data its header declares "
                                f"({'x'.join(map(str, dims))})")
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream inside a .gz
        raise DataError(f"cannot read {path}: {described(exc)}") from None
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims) if count else torch.zeros(dims, dtype=torch.uint8)


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzipped when the name ends in .gz), e.g. a subset of a dataset."""
    if array.dtype != torch.uint8:
        raise ValueError(f"write_idx stores unsigned bytes, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.contiguous().numpy().tobytes())
