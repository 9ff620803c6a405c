"""The run folder as a safe place: one run at a time (a lock), no new run over an old one's records, no stale temp files.

The lock is an exclusive `flock` on `RUN/.lock`, taken without waiting: the OS releases it when the
holding process ends, however it ends (kill -9 included), so a lock is never left stuck. The file
records the holder's PID and host for the message of the process that is turned away; it is removed
when the holder releases the lock. Network file systems may not honour `flock` across machines
(NFS does only with its lock manager running): runs on different nodes must not share a run folder.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys
from contextlib import suppress
from pathlib import Path
from typing import IO

from ..errors import RunFolderError

LOCK_NAME = ".lock"
LATEST = "latest_checkpoint.pt"
BEST = "best_model.pt"
METRICS = "metrics.jsonl"
#: the files the trainer writes into a run folder (their stale temp files are removed at the start)
RUN_FILES = (LATEST, BEST, METRICS, "config.yaml", "results.md", "accuracy_vs_bits.png")
#: files whose presence means trained epochs: a new run must not start over them
RECORDS = (BEST, METRICS, "results.md")
#: the temp-file names of adabits.atomic: `.NAME.<8 hex>.tmp`
_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


def cannot_write(folder: Path, exc: OSError) -> RunFolderError:
    """The one message for a run folder that cannot be created or written."""
    cause = exc.strerror or str(exc)
    return RunFolderError(f"cannot write the run folder {folder} ({cause}); "
                          "set log_dir to a folder you can write, or fix its permissions")


class RunLock:
    """An exclusive lock on one run folder, held by one process; `release()` is safe to call twice."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._file: IO[str] | None = None
        self._created: list[Path] = []  # the folders acquire made, deepest first

    def acquire(self) -> "RunLock":
        """Take the lock now or raise RunFolderError naming the holder; creates the folder (its write check)."""
        try:
            self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not os.path.lexists(p)]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = self._open_locked()
            self._file.truncate()
            self._file.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
            self._file.flush()
        except OSError as exc:
            self.release()
            raise cannot_write(self.run_dir, exc) from None
        except BaseException:
            self.release()
            raise
        return self

    def _open_locked(self) -> IO[str]:
        """The lock file, open and locked, at position 0."""
        while True:
            f = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock is
            try:
                locked = _try_lock(f)
                if locked and _same_file(f, self.path):
                    f.seek(0)
                    return f
                holder = None if locked else _holder(f)
            except BaseException:
                f.close()
                raise
            f.close()
            if holder is not None:
                raise RunFolderError(
                    f"the run folder {self.run_dir} is in use by another run ({holder}); wait for it to end "
                    "or stop it, or use another run_name or log_dir")
            # else the previous holder removed the file between our open and our lock: lock the new one

    def release(self) -> None:
        """Unlock; the folders acquire made are removed again while empty (a run that failed to start leaves none)."""
        if self._file is not None:
            if sys.platform != "win32":  # removed while still held, so no other process can lock the old file
                with suppress(OSError):
                    self.path.unlink()
            self._file.close()  # closing releases the lock
            self._file = None
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []


def _holder(f: IO[str]) -> str:
    """What the holder recorded (Windows locks are mandatory, so the file may not be readable there)."""
    try:
        f.seek(0)
        return f.read().strip() or "a process that has not recorded its PID yet"
    except OSError:
        return "another process"


def _try_lock(f: IO[str]) -> bool:
    """A non-blocking exclusive lock on the open file; False if another process holds one."""
    if sys.platform == "win32":
        import msvcrt
        try:
            f.seek(0)  # every process locks the same first byte
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise RunFolderError(f"the file system of {f.name} does not support locks ({exc.strerror}); "
                                 "use a log_dir on a local disk, or on NFS with its lock manager running") from None
        raise
    return True


def _same_file(f: IO[str], path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def remove_stale_temps(run_dir: Path) -> list[str]:
    """Remove the temp files an interrupted atomic write of ours left (call under the lock); returns their names."""
    removed = []
    try:
        for entry in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
            match = _TEMP.fullmatch(entry.name)
            if match and match["name"] in RUN_FILES and entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry.name)
    except OSError as exc:
        raise cannot_write(run_dir, exc) from None
    return removed


def previous_checkpoint(run_dir: Path) -> Path | None:
    """The run folder's latest_checkpoint.pt to resume from; None for a new run.

    A folder whose latest_checkpoint.pt is gone but which holds records of trained epochs is not a new
    run: starting over would replace its best_model.pt and add a second history to metrics.jsonl.
    """
    latest = run_dir / LATEST
    if latest.is_file():
        return latest
    if os.path.lexists(latest):
        kind = "a folder" if latest.is_dir() else "a broken link" if latest.is_symlink() else "not a regular file"
        raise RunFolderError(f"{latest} is {kind}, not a checkpoint; move it away to resume or start this run, "
                             "or use another run_name")
    records = [name for name in RECORDS if os.path.lexists(run_dir / name)]
    if not records:
        return None
    resume = (f"resume from its best model with resume={run_dir / BEST}, or " if (run_dir / BEST).is_file() else "")
    raise RunFolderError(f"the run folder {run_dir} holds {', '.join(records)} of an earlier run but no {LATEST} "
                         f"to resume from; {resume}start over with another run_name or after deleting {run_dir}")


def check_resume_into(run_dir: Path, source: Path) -> str | None:
    """`resume=source` into this run folder: refused over another run's records; a note when it replaces the latest.

    From a checkpoint outside the folder, the folder must hold no run of its own. From one inside it
    (its best_model.pt, say), the run goes on from there and its latest_checkpoint.pt is replaced.
    """
    latest = run_dir / LATEST
    if source.resolve().parent == run_dir.resolve():
        if latest.is_file() and source.resolve() != latest.resolve():
            return f"resuming from {source.name}: {latest} is replaced by this run's checkpoint after the next epoch"
        return None
    held = [name for name in (LATEST, *RECORDS) if os.path.lexists(run_dir / name)]
    if not held:
        return None
    go_on = (f"; to continue the run in {run_dir}, run without resume= (it resumes from its {LATEST})"
             if latest.is_file() else "")
    raise RunFolderError(f"resume={source} would continue that run in {run_dir}, which holds {', '.join(held)} "
                         f"of another run; use another run_name, or delete that folder to replace it{go_on}")
