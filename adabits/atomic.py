"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written one.

Checkpoints, packed and ONNX exports and downloaded data all go through `atomic_write`. The bytes go to
a uniquely named temp file in the target's folder (so the rename stays on one file system), are fsynced,
and replace the target with `os.replace`; the folder is then fsynced where the OS allows it, so the
rename itself survives a power cut. On any failure the temp file is removed and the old file stays.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

__all__ = ["atomic_write"]


@overload
def atomic_write(path: str | os.PathLike[str], mode: Literal["wb"] = ...,
                 encoding: None = ...) -> AbstractContextManager[BinaryIO]: ...
@overload
def atomic_write(path: str | os.PathLike[str], mode: Literal["w"],
                 encoding: str | None = ...) -> AbstractContextManager[TextIO]: ...
def atomic_write(path: str | os.PathLike[str], mode: str = "wb",
                 encoding: str | None = None) -> AbstractContextManager[IO[Any]]:
    """`with atomic_write(path) as f: f.write(...)`: `path` is replaced only when the block succeeds.

    The file is created with the permissions `open()` would give it (0o666 less the umask), and the
    missing parent folders are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes a whole new file: mode 'wb' or 'w', not {mode!r}")
    return _atomic_write(Path(path), mode, encoding)


@contextmanager
def _atomic_write(path: Path, mode: str, encoding: str | None) -> Iterator[IO[Any]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new file `.NAME.<random>.tmp` beside `path`, opened for writing; never one that exists."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; folders cannot be opened on Windows, where this is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself has happened
    finally:
        os.close(fd)
