"""A resumable runner for long benchmarks made of many jobs: a process pool that starts each job once
the jobs it needs are done, keeps one JSON file per finished job (so that a stopped run resumes where
it stopped), and keeps going past a failed job, skipping only what depends on it."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol, TypeVar


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
