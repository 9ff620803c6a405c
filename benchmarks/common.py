"""The one module the benchmarks share (issue 31): the machine a result was measured on, interleaved
timing, the command line a result records, the report (JSON on stdout and, with --out, in a file), logged
subprocesses and a resumable runner for benchmarks made of many jobs. What a benchmark imports from here
is public; no benchmark imports another's private names (tests/benchmarks/test_benchmark_imports.py)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from adabits.errors import UserError

# --- the machine: CPU model, cores, the int8 instructions that decide integer kernel speed, and the
# versions of the libraries that ran; recorded in every result file by `report`

#: CPU flags (as /proc/cpuinfo names them) of the instructions int8 kernels use: x86 AVX2 / AVX-512
#: byte ops, VNNI dot products, AMX tiles; ARM dot product and int8 matrix multiply
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "asimddp", "i8mm")
#: libraries whose version is recorded when installed (read from package metadata: nothing is imported)
PACKAGES = ("onnxruntime", "onnx", "brevitas", "executorch", "torchao")


def parse_cpuinfo(text: str) -> tuple[str | None, list[str]]:
    """The CPU model and the present INT8_FLAGS, from the text of /proc/cpuinfo (x86 or ARM)."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [flag for flag in INT8_FLAGS if flag in flags]


def describe() -> dict[str, Any]:
    """The machine and software of this process; `int8_instructions` is None where it can't be read."""
    try:
        model, int8 = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, int8 = None, None
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "int8_instructions": int8,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **versions,
    }


# --- reporting: bad input, the recorded command, timing, the result file

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
    """Add the machine description and the UTC date (unless `result` has one) to `result`, print it as
    indented JSON (unless `echo` is False) and, when `out` is given, write the same text there. Returns
    what was written. The date is what `python -m benchmarks.report` names under a table of the file."""
    full = {**result, "machine": describe()}
    full.setdefault("date", time.strftime("%Y-%m-%d", time.gmtime()))
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


# --- the job runner: a process pool that starts each job once the jobs it needs are done, keeps one JSON
# file per finished job (so that a stopped run resumes where it stopped) and keeps going past a failed
# job, skipping only what depends on it

class Job(Protocol):
    """What the runner needs of a job: its key (a relative path, unique), the keys it needs, its order."""

    @property
    def key(self) -> str: ...

    @property
    def needs(self) -> list[str]: ...

    @property
    def priority(self) -> tuple[int, ...]: ...


J = TypeVar("J", bound=Job)


class JobsFailed(RuntimeError):
    """Some jobs failed (or needed one that did); the others finished and were kept."""

    def __init__(self, failed: dict[str, str]) -> None:
        super().__init__(f"{len(failed)} jobs failed, run the same command again to retry them: {failed}")
        self.failed = failed


def result_path(work_dir: Path, key: str) -> Path:
    return work_dir / f"{key}.json"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_jobs(jobs: Sequence[J], run: Callable[[J], dict[str, Any]], work_dir: Path, workers: int,
             executor: Executor | None = None) -> dict[str, dict[str, Any]]:
    """Run `run(job)` for every job without a result file in `work_dir`, at most `workers` at a time,
    a job only after those it needs; the ready jobs start in `priority` order. Returns every job's
    result by key; raises JobsFailed after the others finished if any failed.

    `run` must be picklable (a module-level function) for the default executor, a pool of `workers`
    spawned processes: jobs that build their own threads and data loaders need fresh processes."""
    done: dict[str, dict[str, Any]] = {}
    for job in jobs:
        path = result_path(work_dir, job.key)
        if path.is_file():
            done[job.key] = json.loads(path.read_text())
    pending = [job for job in jobs if job.key not in done]
    running: dict[Future, J] = {}
    failed: dict[str, str] = {}
    pool = executor or ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    with pool:
        while pending or running:
            ready = [job for job in pending if all(need in done for need in job.needs)]
            for job in sorted(ready, key=lambda j: j.priority)[: workers - len(running)]:
                pending.remove(job)
                running[pool.submit(run, job)] = job
                _log(f"start {job.key}")
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001  (keep the other jobs going; this one reruns next time)
                    failed[job.key] = f"{type(exc).__name__}: {exc}"
                    _log(f"FAILED {job.key}: {failed[job.key]}")
                    _drop_dependents(job.key, pending, failed)
                    continue
                _save(result_path(work_dir, job.key), result)
                done[job.key] = result
                _log(f"done  {job.key} {json.dumps(result.get('top1'))}" if "top1" in result else f"done  {job.key}")
    if failed:
        raise JobsFailed(failed)
    return done


def _drop_dependents(key: str, pending: list, failed: dict[str, str]) -> None:
    """Remove from `pending` every job that needs `key`, directly or through another pending job."""
    blocked = [key]
    while blocked:
        missing = blocked.pop()
        for job in [j for j in pending if missing in j.needs]:
            pending.remove(job)
            failed[job.key] = f"needs {missing}"
            blocked.append(job.key)


def _save(path: Path, result: dict[str, Any]) -> None:
    """Write atomically: a file that exists is a finished job."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
