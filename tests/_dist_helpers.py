"""Helpers of the distributed tests: Gloo process groups of N CPU processes started by torch.multiprocessing.

Each worker sets the environment torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and then uses the product code exactly as `train.py` does under torchrun.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adabits.models.registry import list_models, register_model
from adabits.models.resnet_cifar import CifarResNet

FROZEN_BN_MODEL = "resnet8_frozen_bn_test"


class FrozenBNResNet(CifarResNet):
    """A ResNet-8 whose BNs normalise with their running statistics even in training.

    Per-process BN batch statistics differ from those of the whole batch, so N processes can only
    reproduce one process exactly where BN does not look at the batch; this keeps BN's gamma/beta
    per bit-width (still unused by the other bit-widths) and the PACT alphas per bit-width.
    """

    def train(self, mode: bool = True) -> "FrozenBNResNet":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


if FROZEN_BN_MODEL not in list_models():
    def resnet8_frozen_bn_test(bits_list: list, config: Any = None, num_classes: int = 10,
                               in_chans: int = 3) -> nn.Module:
        return FrozenBNResNet(8, bits_list, config, num_classes, in_chans, width=8)

    register_model(resnet8_frozen_bn_test)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(torchrun_env(rank, world, port))
    torch.set_num_threads(1)
    try:
        result = fn(rank, *args)
    except BaseException as exc:  # the parent reads what went wrong
        result = {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__,
                  "traceback": traceback.format_exc()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_processes(fn: Callable[..., Any], world: int, out: Path, *args: Any) -> list[Any]:
    """Run fn(rank, *args) in `world` spawned processes of one Gloo group; returns each rank's result."""
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_entry, args=(fn, world, free_port(), str(out), args), nprocs=world,
                       start_method="spawn", join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


class CollectiveCounter:
    """Counts calls of torch.distributed.all_reduce (patched in place; `restore()` puts it back)."""

    def __init__(self) -> None:
        self.calls = 0
        self._original = dist.all_reduce

        def counting(*a: Any, **k: Any) -> Any:
            self.calls += 1
            return self._original(*a, **k)

        dist.all_reduce = counting

    def restore(self) -> None:
        dist.all_reduce = self._original


def worker_pids(parent: int) -> list[int]:
    """Children of the torchrun agent (the workers), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                pids.append(int(entry.name))
    return sorted(pids)



def kill_second_worker_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> int | None:
    """SIGKILL the second torchrun worker of `proc` once `ready()` holds; its PID, or None if it never did."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            workers = worker_pids(proc.pid)
            if len(workers) == 2:
                os.kill(workers[1], signal.SIGKILL)
                return workers[1]
        time.sleep(0.02)
    return None
