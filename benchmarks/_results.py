"""What the benchmarks share: interleaved timing, and the report (JSON on stdout and, with --out, in a file)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def report(result: dict[str, Any], out: str | Path | None) -> None:
    """Print `result` as indented JSON and, when `out` is given, write the same text there."""
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="", flush=True)
    if out:
        Path(out).write_text(text)


def time_interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, `rounds` times, the variants interleaved round by round so
    that a noisy machine slows them alike (the ratios of medians are what the benchmarks report)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times
