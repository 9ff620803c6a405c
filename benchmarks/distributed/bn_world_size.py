"""How far a 2-process run drifts from a 1-process run of the same config: per-process BN statistics.

In training mode every BN normalises with the statistics of its own process's part of the batch
(`batch_size / N` samples), so N processes compute other activations and gradients than one
process with the whole batch, and the difference compounds step by step. This script trains the
same config in one process and in 2 Gloo processes (the same global batches, the same start: DDP
broadcasts rank 0's weights) and reports, after each of `--at` optimizer steps, the relative
difference ||w_2proc - w_1proc|| / ||w_1proc|| of every conv and linear weight (median and
quartiles), next to how far training moved them from their start (||w_1proc - w_start|| /
||w_start||). BN's gamma/beta and the PACT clipping levels are left out: a beta starts at 0, and
relative to a norm near 0 any difference is huge.

`--frozen-bn` is the control: every BN normalises with its running statistics in training too (it
stays in eval mode), so the batch split changes nothing but the order of the float sums. Run:

    python -m benchmarks.distributed.bn_world_size [--at 1 10 40] [--batch 64] [--depth 20] [--bits 8 6 5 4] [--frozen-bn] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from adabits.engine import Trainer, build_config
from adabits.engine.distributed import DistEnv

from ..common import BadInput, command, exit_on_bad_input, report

WORLD = 2


def _quiet(_msg: str) -> None:
    pass


def _config(args: argparse.Namespace, log_dir: str) -> Any:
    return build_config({
        "model": "resnet_cifar", "depth": args.depth, "dataset": "synthetic", "num_classes": 10, "in_chans": 3,
        "image_size": 32, "synthetic_train_size": max(args.at) * args.batch, "synthetic_val_size": 8,
        "batch_size": args.batch, "bits_list": args.bits, "lr": args.lr, "lr_scheduler": "constant",
        "num_epochs": 1, "progress": False, "log_dir": log_dir, "num_threads": 1, "random_seed": 1,
    })


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The conv and linear weights (the parameters of 2 or more dimensions)."""
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.dim() > 1}


def _train(trainer: Trainer, at: list[int], frozen_bn: bool) -> dict[int, dict[str, torch.Tensor]]:
    """Every step of the one epoch; the weights after each step in `at`."""
    trainer.model.train()
    if frozen_bn:
        for module in trainer.model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    loader = trainer.loaders.train
    loader.set_epoch(0)
    seen = {}
    for step, (images, labels) in enumerate(loader):
        trainer.train_step(images, labels, loader.share(step), step=step)
        if step + 1 in at:
            seen[step + 1] = _weights(trainer)
    return seen


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    trainer = Trainer(_config(args, out), echo=_quiet).prepare()
    weights = _train(trainer, args.at, args.frozen_bn)
    trainer.close()
    if rank == 0:
        torch.save(weights, Path(out) / "two_processes.pt")


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[float]:
    """||a - b|| / ||b|| of every parameter tensor (those of norm 0 in b left out)."""
    return [float((a[k] - b[k]).norm() / b[k].norm()) for k in b if b[k].norm() > 0]


def _quartiles(values: list[float]) -> dict[str, float]:
    """Quartiles and maximum, to 3 significant digits (0 stays visible as 0, 1e-7 as 1e-7)."""
    q1, median, q3 = statistics.quantiles(values, n=4)
    return {name: float(f"{v:.3g}") for name, v in (("q1", q1), ("median", median), ("q3", q3), ("max", max(values)))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed.bn_world_size", description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=int, nargs="+", default=[1, 10, 40], help="steps after which to compare")
    parser.add_argument("--batch", type=int, default=64, help="the global batch (each of 2 processes takes half)")
    parser.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth (6n+2)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--frozen-bn", action="store_true", help="the control: BN uses its running statistics in training")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    if min(args.at) < 1 or args.batch < WORLD or args.batch % WORLD:
        raise BadInput(f"--at steps must be at least 1 and --batch a multiple of {WORLD}, got {args.at} and {args.batch}")
    with tempfile.TemporaryDirectory() as out:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        mp.start_processes(_worker, args=(port, args, out), nprocs=WORLD, start_method="spawn", join=True)
        two = torch.load(Path(out) / "two_processes.pt", weights_only=True)  # {step: weights}
        torch.set_num_threads(1)
        single = Trainer(_config(args, out), echo=_quiet, dist_env=DistEnv()).prepare()
        start = _weights(single)
        one = _train(single, args.at, args.frozen_bn)
    report({
        "command": command("distributed.bn_world_size", argv),
        "model": f"resnet_cifar depth {args.depth}", "bits_list": args.bits, "global_batch": args.batch,
        "lr": args.lr, "bn": "running statistics (frozen)" if args.frozen_bn else "batch statistics", "processes": f"1 vs {WORLD} Gloo processes of 1 thread each",
        "weight_tensors": len(start),
        "relative_difference_2proc_vs_1proc": {s: _quartiles(_relative(two[s], one[s])) for s in sorted(one)},
        "relative_change_from_start_1proc": {s: _quartiles(_relative(one[s], start)) for s in sorted(one)},
    }, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("distributed.bn_world_size"):
        main()
