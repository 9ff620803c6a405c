"""A failed write into the run folder (full disk, quota, read-only or forbidden) as one line instead of a traceback.

torch.save reports a failed write of its zip writer as a RuntimeError ("unexpected pos ...",
"PytorchStreamWriter failed writing file ...") that hides the OS's reason, so that message is
completed with the free space left on the file's disk. Files go through adabits.atomic, so the
file a failed write was replacing stays as it was.
"""
from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunFolderError

#: the OS errors of an environment that refuses a write (not bugs)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                          errno.EFBIG, errno.EISDIR, errno.ENOTDIR})
#: torch.save's messages for a write its zip writer could not complete
_TORCH_WRITE_FAILURE = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed")


@contextmanager
def reported(path: Path, kept: str = "the previous file is unchanged") -> Iterator[None]:
    """Turn a refused write of `path` into RunFolderError: the file, the cause, what was kept, what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        raise RunFolderError(f"could not write {path}: {exc.strerror or exc} ({name}); {kept}. "
                             "Free space or fix the folder, then run the same command again to resume") from None
    except RuntimeError as exc:
        if not _TORCH_WRITE_FAILURE.search(str(exc)):
            raise
        first = str(exc).strip().splitlines()[0]
        raise RunFolderError(f"could not write {path}: torch.save failed ({first}; {_free_space(path)}), "
                             f"most often a full disk; {kept}. Free space, then run the same command again "
                             "to resume") from None


def _free_space(path: Path) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.0f} MiB free on its disk"
