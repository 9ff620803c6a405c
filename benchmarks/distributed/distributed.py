"""Distributed joint training: step time and gradient communications per optimizer step, 1 vs 2 processes.

Two Gloo CPU processes (spawned here, with the environment torchrun would give them) time three
variants of one joint AdaBits step (forward + backward at every bit-width, then one SGD step),
interleaved round by round; the reported numbers are medians and ratios of medians:

- `single_process`: one process, the whole global batch (rank 1 waits at a barrier meanwhile);
- `adabits_ddp`: the trainer's path, 2 processes with half the batch each: per-bit backwards under
  `no_sync`, then one coalesced all-reduce (adabits.joint.gradients.GradientAllReduce);
- `ddp_per_backward`: plain DDP with `find_unused_parameters=True`, syncing in every backward.

Communications are counted, not timed: calls of torch.distributed.all_reduce plus DDP's own bucket
all-reduces (through a counting comm hook). Run:

    python -m benchmarks.distributed.distributed [--rounds 10] [--batch 64] [--model resnet20] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import adabits
from adabits.engine import Trainer, build_config
from adabits.engine.build import build_model
from adabits.engine.distributed import DistEnv

from ..common import command, exit_on_bad_input, report

WORLD = 2


def _quiet(_msg: str) -> None:
    pass


class Counts:
    """all_reduce calls (patched in place) and DDP reducer bucket syncs (a comm hook), per variant."""

    def __init__(self) -> None:
        self.all_reduce = 0
        self.ddp_buckets = 0
        original = dist.all_reduce

        def counting(*a: Any, **k: Any) -> Any:
            self.all_reduce += 1
            return original(*a, **k)

        dist.all_reduce = counting

    def hook(self, state, bucket):  # no annotations: DDP checks them against dist.GradBucket
        self.ddp_buckets += 1
        return default_hooks.allreduce_hook(state, bucket)

    def take(self) -> tuple[int, int]:
        out = (self.all_reduce, self.ddp_buckets)
        self.all_reduce = self.ddp_buckets = 0
        return out


def per_backward_ddp_step(cfg: Any, rank: int, counts: Counts) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The naive baseline: DDP's reducer in every per-bit backward, unused parameters found by graph traversal."""
    torch.manual_seed(cfg.random_seed)
    model = build_model(cfg, 10, 3)
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    ddp.register_comm_hook(None, counts.hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    criterion = nn.CrossEntropyLoss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for bits in cfg.train_bits:
            adabits.set_bits(model, bits)
            criterion(ddp(images), labels).backward()
        optimizer.step()

    return step


def worker(rank: int, port: int, args: argparse.Namespace, argv: list[str]) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    raw = {"model": args.model, "dataset": "synthetic", "num_classes": 10, "in_chans": 3, "image_size": 32,
           "synthetic_train_size": args.batch, "synthetic_val_size": 8, "batch_size": args.batch,
           "bits_list": args.bits, "lr": 0.02, "lr_scheduler": "constant", "num_epochs": 1,
           "progress": False, "log_dir": "/tmp/adabits-bench-distributed", "num_threads": 1}
    cfg = build_config(raw)
    trainer = Trainer(cfg, echo=_quiet).prepare()
    counts = Counts()
    trainer.forward.register_comm_hook(None, counts.hook)
    # the single-process baseline gets a run folder of its own: rank 0 holds the lock of the shared one
    single_cfg = build_config({**raw, "run_name": "single_process"})
    single = Trainer(single_cfg, echo=_quiet, dist_env=DistEnv()).prepare() if rank == 0 else None
    naive = per_backward_ddp_step(cfg, rank, counts)
    half = args.batch // WORLD
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), generator=gen).float()
    labels = torch.randint(0, 10, (args.batch,), generator=gen)
    mine = slice(rank * half, (rank + 1) * half)
    trainer.model.train()
    variants: dict[str, Callable[[], None]] = {
        "single_process": (lambda: single.train_step(images, labels, step=0)) if single else (lambda: None),
        "adabits_ddp": lambda: trainer.train_step(images[mine], labels[mine], share=1 / WORLD, step=0),
        "ddp_per_backward": lambda: naive(images[mine], labels[mine]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    comms: dict[str, tuple[int, int]] = {}
    for r in range(args.warmup + args.rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            dist.barrier()
            counts.take()
            t0 = time.perf_counter()
            variants[name]()
            dist.barrier()
            elapsed = time.perf_counter() - t0
            comms[name] = counts.take()
            if r >= args.warmup:
                times[name].append(elapsed)
    if rank == 0:
        medians = {name: statistics.median(t) for name, t in times.items()}
        grads = sum(p.numel() for p in trainer.model.parameters())
        result = {
            "command": command("distributed.distributed", argv),
            "processes": f"{WORLD} Gloo processes of 1 thread each", "model": args.model, "bits_list": args.bits,
            "global_batch": args.batch, "rounds": args.rounds, "parameters": grads,
            "median_step_s": {k: round(v, 4) for k, v in medians.items()},
            "ratio_to_single_process": {k: round(v / medians["single_process"], 3) for k, v in medians.items()},
            "communications_per_step": {
                name: {"all_reduce_calls": comms[name][0], "ddp_bucket_all_reduces": comms[name][1]}
                for name in variants},
        }
        report(result, args.out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="the global batch (each process gets half)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4])
    parser.add_argument("--out", help="write the results as JSON here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, args, argv), nprocs=WORLD, start_method="spawn", join=True)


if __name__ == "__main__":
    with exit_on_bad_input("distributed.distributed"):
        main()
