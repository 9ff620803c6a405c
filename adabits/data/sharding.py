"""Samplers that give each of N processes its part of a map-style dataset (for torch DataLoader loaders).

Training uses torch's DistributedSampler (shuffled with the shared seed, reshuffled by `set_epoch`).
Validation must count every sample exactly once, and DistributedSampler cannot do that: it pads the
last shard with duplicates or drops samples. `EvalShardSampler` gives contiguous shards whose sizes
differ by at most one instead.
"""
from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import cast

from torch.utils.data import Dataset, DistributedSampler, Sampler


class EvalShardSampler(Sampler[int]):
    """Indices [rank * n // world, (rank + 1) * n // world): every sample in exactly one process, no padding."""

    def __init__(self, dataset: Sized, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        n = len(dataset)
        self.start, self.stop = rank * n // world_size, (rank + 1) * n // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def train_sampler(dataset: Sized, rank: int, world_size: int, seed: int, drop_last: bool = False) -> DistributedSampler:
    """This process's shuffled part of every epoch; call `set_epoch(epoch)` before each epoch."""
    return DistributedSampler(cast(Dataset, dataset), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                              drop_last=drop_last)
