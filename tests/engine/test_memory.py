"""adabits.keep_freed_memory (issue 32): glibc keeps what a step frees, so the next step faults no page in.

The effect is shown in a fresh process (page faults, never times): memory allocated, touched and freed in a
loop is faulted in again every time under glibc's defaults, and once only with the settings applied."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import adabits
from adabits import memory
from adabits.memory import MemorySettings, keep_freed_memory, loaded_allocator

GLIBC = loaded_allocator() == "glibc"

MEMORY_PY = Path(memory.__file__)

#: a step's pattern on glibc itself (no torch: a fresh interpreter starts in a second): 40 MB in blocks of
#: 100 kB allocated, touched and freed, six times
CHURN = textwrap.dedent("""
    import ctypes, importlib.util, json, resource, sys
    spec = importlib.util.spec_from_file_location("adabits_memory", sys.argv[2])
    memory = importlib.util.module_from_spec(spec)
    sys.modules["adabits_memory"] = memory
    spec.loader.exec_module(memory)
    settings = memory.keep_freed_memory() if sys.argv[1] == "keep" else None
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(6):
        before = faults()
        blocks = [libc.malloc(100 << 10) for _ in range(400)]
        for block in blocks:
            ctypes.memset(block, 1, 100 << 10)
        for block in blocks:
            libc.free(block)
        counts.append(faults() - before)
    print(json.dumps({"counts": counts, "settings": str(settings)}))
""")


def _churn(mode: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "ADABITS_KEEP_FREED_MEMORY")}
    done = subprocess.run([sys.executable, "-c", CHURN, mode, str(MEMORY_PY)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_freed_memory_is_reused_without_page_faults(tmp_path: Path) -> None:
    pages = 400 * (100 << 10) // os.sysconf("SC_PAGE_SIZE")  # what one iteration touches
    left = _churn("leave", tmp_path)
    assert min(left["counts"][1:]) > pages // 2, left  # glibc's defaults: every iteration faults them in again
    kept = _churn("keep", tmp_path)
    assert "keeps freed memory" in kept["settings"]
    assert kept["counts"][0] > pages // 2 and sum(kept["counts"][1:]) < pages // 100, kept  # once, then never


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_settings_applied_and_idempotent() -> None:
    first = keep_freed_memory()
    again = adabits.keep_freed_memory()
    assert first == again and first.applied and first.allocator == "glibc"
    assert first.settings == {"M_MMAP_THRESHOLD": memory.MMAP_THRESHOLD, "M_TRIM_THRESHOLD": -1,
                              "M_TOP_PAD": memory.TOP_PAD}
    assert "keeps freed memory" in str(first)
    capped = keep_freed_memory(arena_max=4)
    assert capped.settings["M_ARENA_MAX"] == 4
    keep_freed_memory(arena_max=8)  # glibc's default on 2 cores (8 * cores): leave the process as it was


def test_a_value_glibc_refuses_is_reported_not_raised(monkeypatch) -> None:
    class FakeMallopt:
        argtypes: object = None
        restype: object = None

        def __call__(self, param: int, value: int) -> int:
            return 0 if param == memory.M_MMAP_THRESHOLD else 1

    class FakeLibc:
        mallopt = FakeMallopt()

    monkeypatch.setattr(memory, "loaded_allocator", lambda maps=None: "glibc")
    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    result = keep_freed_memory()
    assert result.applied and "M_MMAP_THRESHOLD" not in result.settings
    assert result.reason == f"glibc refused M_MMAP_THRESHOLD={memory.MMAP_THRESHOLD}"


def test_switched_off_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ADABITS_KEEP_FREED_MEMORY", "0")
    result = keep_freed_memory()
    assert not result.applied and "ADABITS_KEEP_FREED_MEMORY=0" in str(result)


def test_other_allocators_and_platforms_are_left_alone(monkeypatch) -> None:
    assert loaded_allocator("7f00-7f01 r-xp 0 0:0 0 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n") == "jemalloc"
    assert loaded_allocator("/usr/lib/libtcmalloc_minimal.so.4\n") == "tcmalloc"
    monkeypatch.setattr(memory, "loaded_allocator", lambda maps=None: "jemalloc")
    result = keep_freed_memory()
    assert result == MemorySettings("jemalloc", False, {}, "jemalloc is loaded and keeps it itself")
    monkeypatch.setattr(memory, "loaded_allocator", lambda maps=None: "darwin")
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    result = keep_freed_memory()
    assert not result.applied and result.reason == "not glibc" and "left to it" in str(result)


def test_environment_form_matches_the_call() -> None:
    assert memory.ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"] == str(memory.MMAP_THRESHOLD)
    assert memory.ENVIRONMENT["MALLOC_TOP_PAD_"] == str(memory.TOP_PAD)
    assert int(memory.ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 35


def test_the_command_line_keeps_freed_memory_first(monkeypatch) -> None:
    from adabits import cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("memory"))

    def stop(argv):
        calls.append("parse")
        raise SystemExit(0)

    monkeypatch.setattr(cli, "parse_args", stop)
    with pytest.raises(SystemExit):
        cli.main(["train"])
    assert calls == ["memory", "parse"]
