"""What the benchmarks share: interleaved timing, the command line they record, and the report (JSON
on stdout and, with --out, in a file, always with the machine it was measured on)."""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adabits.errors import UserError

from ._machine import describe


class BadInput(ValueError):
    """An argument or config the benchmark can't run with: reported in one line, exit status 2."""


@contextmanager
def exit_on_bad_input(script: str) -> Iterator[None]:
    """Around a script's main: a BadInput or the library's UserError (bad config, missing file)
    becomes one line on stderr and exit status 2, not a traceback."""
    try:
        yield
    except (BadInput, UserError) as exc:
        print(f"benchmarks.{script}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command line that reruns `script` (a module of this package) with `argv` (default: this
    process's arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", f"benchmarks.{script}", shlex.join(args)]).rstrip()


def full_command(script: str, args: argparse.Namespace, leave_out: Iterable[str] = ()) -> str:
    """The command line of `script` with every option of `args` spelled out, defaults included, so
    that the recorded command still reproduces the run when a default changes. Flags that are off
    and options that are None are left out, as are the names in `leave_out`."""
    parts = []
    for name, value in vars(args).items():
        if name in leave_out or value is None or value is False:
            continue
        option = "--" + name.replace("_", "-")
        if value is True:
            parts.append(option)
        elif isinstance(value, (list, tuple)):
            parts.append(" ".join([option, *(shlex.quote(str(v)) for v in value)]))
        else:
            parts.append(f"{option} {shlex.quote(str(value))}")
    return " ".join([f"python -m benchmarks.{script}", *parts])


def report(result: dict[str, Any], out: str | Path | None, echo: bool = True) -> dict[str, Any]:
    """Add the machine description to `result`, print it as indented JSON (unless `echo` is False)
    and, when `out` is given, write the same text there. Returns what was written."""
    full = {**result, "machine": describe()}
    text = json.dumps(full, indent=2) + "\n"
    if echo:
        print(text, end="", flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return full


def time_interleaved(variants: dict[str, Callable[[], object]], rounds: int,
                     times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, `rounds` times, the variants interleaved round by round so
    that a noisy machine slows them alike (the ratios of medians are what the benchmarks report).

    Appends to `times` when given, round by round, so that a run stopped midway keeps what it measured."""
    times = {name: [] for name in variants} if times is None else times
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times.setdefault(name, []).append(time.perf_counter() - start)
    return times


def run_logged(script: str, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> float:
    """Run a command with its output in `log`; its wall time in seconds. A failure stops the benchmark
    with one line naming the command and the log."""
    start = time.time()
    with open(log, "w") as out:
        done = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.{script}: {' '.join(args)} failed with status {done.returncode}; see {log}")
    return round(time.time() - start, 1)
