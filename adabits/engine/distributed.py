"""Data-parallel training on torch.distributed, launched by torchrun (one process per device).

The joint AdaBits step runs one forward and one backward per bit-width before a single optimizer
step, and every bit-width uses a different subset of the parameters (its own BN and PACT alphas).
DistributedDataParallel's reducer assumes one backward per step over a fixed set of used
parameters: left to itself it would all-reduce once per bit-width, and it would need
`find_unused_parameters=True`, an extra autograd-graph traversal on every pass, to cope with the
other bit-widths' parameters. So the trainer runs every per-bit backward inside `ddp.no_sync()`
(PyTorch's documented way to accumulate gradients locally) and then calls `GradientAllReduce`
once: all gradients flattened into a few large buckets (one for the models here), one
`all_reduce` per bucket. This is what the original's `distributed_all_reduce` path did, and what
MosaicML Composer calls the "forced sync" strategy. DDP stays the module wrapper: it broadcasts
rank 0's parameters and buffers at construction (so per-rank initialisation never matters) and
checks that every rank holds the same parameter shapes.

BN running statistics are not broadcast in every forward (`broadcast_buffers=False`, which would
be one more collective per bit-width); each process updates its own from its part of the batch,
and `average_buffers` makes them agree (their mean over processes) before every evaluation and
checkpoint.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..errors import ConfigError, UserError

#: the environment torchrun sets in every worker
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: the backend `dist_backend: auto` picks for each device type
BACKEND_FOR_DEVICE = {"cuda": "nccl", "cpu": "gloo"}

LAUNCH_HINT = ("launch with torchrun, e.g. `torchrun --nproc_per_node=2 train.py app:apps/X.yml` "
               "(see docs/distributed.md)")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among world_size processes and its device index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and results, and shows progress."""
        return self.rank == 0


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(key in env for key in TORCHRUN_VARS)


def env_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank from the torchrun environment (0 outside torchrun); for printing only."""
    env = os.environ if environ is None else environ
    return int(env.get("RANK", "0")) if launched_by_torchrun(env) else 0


def detect(distributed: bool, environ: Mapping[str, str] | None = None) -> DistEnv:
    """DistEnv from the torchrun environment; `distributed: true` without it is an error that says how to launch."""
    env = os.environ if environ is None else environ
    if not launched_by_torchrun(env):
        if distributed:
            missing = [key for key in TORCHRUN_VARS if key not in env]
            raise ConfigError(f"distributed: true, but this process was not started by torchrun "
                              f"({', '.join(missing)} not set); {LAUNCH_HINT}, or set distributed=false")
        return DistEnv()
    try:
        rank, world, local = (int(env[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                          f"{env['RANK']!r}, {env['WORLD_SIZE']!r}, {env['LOCAL_RANK']!r}") from None
    return DistEnv(rank, world, local, enabled=True)


def per_process_batch(batch_size: int, world_size: int) -> int:
    """batch_size is the global batch; each process takes batch_size / world_size of it."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise ConfigError(f"batch_size {batch_size} is not divisible by the world size {world_size} "
                          f"(batch_size is the global batch, split evenly over the processes); "
                          f"use e.g. batch_size={lower or world_size} or {lower + world_size}")
    return batch_size // world_size


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """One CUDA device per process: cuda:LOCAL_RANK, checked against the devices this node has."""
    if not env.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise UserError(f"LOCAL_RANK {env.local_rank} has no GPU: this node has {count}; "
                        f"start at most {count} processes per node (--nproc_per_node={count})")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def resolve_backend(requested: str, device: torch.device) -> str:
    """`auto`: NCCL for CUDA, Gloo for CPU; an explicit choice is checked against this machine and build."""
    backend = BACKEND_FOR_DEVICE.get(device.type) if requested == "auto" else requested
    if backend is None:
        raise ConfigError(f"no distributed backend for device {device}; known: "
                          f"{', '.join(f'{d} -> {b}' for d, b in BACKEND_FOR_DEVICE.items())}")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"dist_backend nccl needs CUDA devices, but this run uses device {device}"
                          f"{'' if torch.cuda.is_available() else ' (CUDA is not available here)'}; "
                          "use dist_backend=gloo or dist_backend=auto")
    available = {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}
    if not available[backend]():
        raise ConfigError(f"dist_backend {backend} is not available in this PyTorch build "
                          f"(torch {torch.__version__}); use dist_backend=auto")
    return backend


def _attempt_store(environ: Mapping[str, str] | None = None) -> dist.Store | None:
    """A store for this restart attempt only, where torchrun's agent shares one store across restarts.

    With `--max-restarts`, torchrun's c10d rendezvous keeps its TCPStore alive from one attempt to the
    next (TORCHELASTIC_USE_AGENT_STORE=True), and the keys of the killed attempt stay in it: a restarted
    rank can read a dead peer's address and fail with "Connection refused" (pytorch/pytorch#135712;
    seen here with torch 2.13). On one node every worker restarts together with the same
    TORCHELASTIC_RESTART_COUNT, so prefixing the keys with it isolates the attempts. Across nodes the
    counts can differ; there torchrun must be started with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.
    """
    env = os.environ if environ is None else environ
    single_node = env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]) == env["WORLD_SIZE"]
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not single_node:
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False)
    return dist.PrefixStore(f"adabits/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def restart_note(environ: Mapping[str, str] | None = None) -> str | None:
    """What to do so that `--max-restarts` works across nodes (None where nothing is needed)."""
    env = os.environ if environ is None else environ
    shared = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    multi_node = env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE")) != env.get("WORLD_SIZE")
    if shared and multi_node and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        return ("torchrun --max-restarts across nodes: start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                "in its environment, or restarted workers may read the dead attempt's addresses (docs/distributed.md)")
    return None


def init_process_group(env: DistEnv, backend: str) -> None:
    """Join the process group torchrun set up (env:// rendezvous); a no-op when already joined."""
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; distributed training is impossible")
    if dist.is_initialized():
        return
    store = _attempt_store()
    if store is None:
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    else:
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, store=store)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_same_config(config: dict[str, Any], env: DistEnv) -> None:
    """Every rank must train the same config: gather them all and name the keys that differ from rank 0's."""
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, config)
    problems = []
    for rank, other in enumerate(gathered[1:], start=1):
        keys = sorted(k for k in set(config) | set(other) if gathered[0].get(k) != other.get(k))
        if keys:
            shown = ", ".join(f"{k}: {gathered[0].get(k)!r} vs {other.get(k)!r}" for k in keys[:5])
            problems.append(f"rank {rank} differs from rank 0 in {len(keys)} key(s) ({shown})")
    if problems:
        raise ConfigError("the processes were started with different configs: " + "; ".join(problems)
                          + ". Start every process with the same config file and overrides.")


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable object)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d (the per-bit BNs inside SwitchBatchNorm2d too) -> torch.nn.SyncBatchNorm.

    Parameters stay the same objects (stats_sharing keeps sharing them). PyTorch's SyncBatchNorm
    runs on GPUs only, so CPU runs get a clear error instead of a failure in the first forward.
    """
    if device.type != "cuda":
        raise ConfigError(f"sync_bn: true needs CUDA devices (torch.nn.SyncBatchNorm does not run on {device.type}); "
                          "set sync_bn=false for this run")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DDP for the broadcast of rank 0's weights and as the module wrapper; gradients go through GradientAllReduce."""
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # buffers are synced at construction, not in every forward (the keyword was renamed in torch 2.13)
    no_forward_buffer_sync: dict[str, Any] = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
        else {"broadcast_buffers": False})
    return ddp(model, device_ids=device_ids, **no_forward_buffer_sync)


def average_buffers(model: nn.Module) -> None:
    """Make the floating-point buffers (BN running statistics) agree: their mean over processes, one all_reduce."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = _flatten_dense_tensors(buffers)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for buf, value in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
        buf.copy_(value)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes in place (metric sums: counts, loss sums, correct counts)."""
    dist.all_reduce(tensor)
    return tensor
