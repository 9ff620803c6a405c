"""Keep freed memory in the process: no allocator churn in a training loop.

A training step allocates and frees the same activation-sized blocks (a few MB each) every step.
glibc's malloc hands large freed blocks back to the kernel (blocks above its mmap threshold are
unmapped on free; free space at the top of the heap above the trim threshold is released), so the
next step faults every page of them in again: measured on ResNet-20 at 4 bits, batch 128, about
7,000 minor page faults a step against about 80 for the float network, and a quarter of the step's time
(benchmarks/training/quant_overhead.py, docs/training.md "Speed"). `keep_freed_memory()` tells glibc to keep
what it frees: large blocks come from the heap (mmap threshold at glibc's maximum, 32 MiB) and the
heap is never trimmed, so a step reuses the pages the previous step touched. The cost: the process keeps
its peak heap until it exits (it would reach that peak every step anyway).

Call it once, at the start of the process, before the model and the data are built (the command line
does; `adabits.keep_freed_memory()` in a loop of your own). The same settings as environment variables,
which take effect only when set before the process starts:

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=67108864

jemalloc or tcmalloc (LD_PRELOAD) keep freed memory by design; with either loaded this does nothing.
Elsewhere than glibc (macOS, Windows, musl) it does nothing either and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MemorySettings", "keep_freed_memory", "loaded_allocator"]

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): blocks up to this size come from the heap
MMAP_THRESHOLD = 32 << 20
#: free space at the top of the heap above which it is released to the kernel: -1 is never
TRIM_THRESHOLD = -1
#: extra heap requested with each growth, so that a growing step asks the kernel less often
TOP_PAD = 64 << 20

#: environment variables of the same settings (read by glibc at process start only)
ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),  # never, in practice (64 GiB)
    "MALLOC_TOP_PAD_": str(TOP_PAD),
}

_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class MemorySettings:
    """What `keep_freed_memory` did: the allocator it found and the glibc settings it applied (none when
    `applied` is False, with `reason` saying why)."""

    allocator: str
    applied: bool
    settings: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def __str__(self) -> str:
        if not self.applied:
            return f"allocator {self.allocator}: freed memory left to it ({self.reason})"
        return f"allocator {self.allocator}: keeps freed memory (" + ", ".join(
            f"{name}={value}" for name, value in self.settings.items()) + ")"


def loaded_allocator(maps: str | None = None) -> str:
    """'jemalloc', 'tcmalloc' or 'mimalloc' when one is loaded into this process (LD_PRELOAD), else
    'glibc' on glibc, else the platform's name. `maps` is the text of /proc/self/maps (read when None)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            maps = ""
    for name in _PRELOADED:
        if f"lib{name}" in maps:
            return name
    if _glibc() is not None:
        return "glibc"
    return sys.platform


def _glibc() -> ctypes.CDLL | None:
    """The C library of this process when it is glibc (it has gnu_get_libc_version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory(*, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD,
                      top_pad: int = TOP_PAD, arena_max: int | None = None) -> MemorySettings:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel (module doc).

    Call once at process start, before large allocations. Safe to call again (it sets the same values)
    and where it cannot apply: it returns what it did and never raises. `arena_max` also caps glibc's
    arenas (unset by default: measured, it changed nothing for a training step). The environment
    variable ADABITS_KEEP_FREED_MEMORY=0 turns it off.
    """
    allocator = loaded_allocator()
    if os.environ.get("ADABITS_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return MemorySettings(allocator, False, reason="ADABITS_KEEP_FREED_MEMORY=0")
    if allocator != "glibc":
        reason = "not glibc" if allocator == sys.platform else f"{allocator} is loaded and keeps it itself"
        return MemorySettings(allocator, False, reason=reason)
    libc = _glibc()
    assert libc is not None  # loaded_allocator said glibc
    wanted = {"M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, mmap_threshold), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, trim_threshold),
              "M_TOP_PAD": (M_TOP_PAD, top_pad)}
    if arena_max is not None:
        wanted["M_ARENA_MAX"] = (M_ARENA_MAX, arena_max)
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied, refused = {}, []
    for name, (param, value) in wanted.items():
        value = min(int(value), 2**31 - 1)  # mallopt takes an int
        if mallopt(param, value) == 1:
            applied[name] = value
        else:
            refused.append(f"{name}={value}")
    if refused:
        return MemorySettings("glibc", bool(applied), applied, "glibc refused " + ", ".join(refused))
    return MemorySettings("glibc", True, applied)
