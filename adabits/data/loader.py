"""An in-memory batch loader: shuffles by index, slices, augments on the batch's device; shards across processes."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .transforms import ToModelInput, draw_crop_flip, random_crop_flip


@dataclass
class TensorLoader:
    """Iterates (inputs, labels) batches of an in-memory uint8 dataset.

    The order and the augmentation of epoch e depend only on (seed, e), so a run resumed at
    epoch e sees exactly the batches an uninterrupted run would have seen.

    With `world_size > 1` every process walks the same global batches (`batch_size` samples, one
    permutation shared by all processes through the common seed) and yields only its own contiguous
    part of each: a training batch of B gives every process B / world_size samples, and a last,
    smaller batch (or a validation set of any size) is split into parts that differ by at most one
    sample, so every validation sample is seen exactly once, with no padding duplicates. `share(step)` says
    which fraction of global batch `step` this process holds (the weight of its gradient).
    `iter_from(k)` starts the epoch at global batch k without touching the k batches before it
    (a run resumed mid-epoch).

    Augmentation: with `aug_seed=None` every process draws the random crops and flips of the whole
    global batch from the shared stream and keeps its part, which makes N processes see exactly
    the inputs one process would. With an `aug_seed` (the original's `use_diff_seed`) each process
    augments its own part from its own stream.
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    to_input: ToModelInput
    shuffle: bool = False
    drop_last: bool = False
    crop_padding: int = 0
    random_flip: bool = False
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    aug_seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.shuffle and self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by the world size {self.world_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """The number of global batches (the same in every process).

        A last training batch with fewer samples than processes is dropped: every process must take
        part in every optimizer step's gradient all-reduce.
        """
        full, rest = divmod(self.num_samples, self.batch_size)
        keep_rest = rest > 0 and not self.drop_last and (rest >= self.world_size or not self.shuffle)
        return full + int(keep_rest)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def _global_count(self, step: int) -> int:
        return min(self.batch_size, self.num_samples - step * self.batch_size)

    def _part(self, count: int) -> slice:
        """This process's contiguous part of a global batch of `count` samples."""
        return slice(self.rank * count // self.world_size, (self.rank + 1) * count // self.world_size)

    def share(self, step: int) -> float:
        """The fraction of global batch `step` that this process holds (1 / world_size for a full batch)."""
        count = self._global_count(step)
        part = self._part(count)
        return (part.stop - part.start) / count

    def _generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.images.device)
        gen.manual_seed(seed * 1_000_003 + self.epoch)
        return gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches from global batch `start` on, exactly as a full pass yields them there.

        The batches before `start` are neither gathered nor augmented; only their random draws are
        made, so that the generators reach batch `start` in the state a full pass leaves them in.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        n = self.num_samples
        gen = self._generator(self.seed)
        own_gen = self._generator(self.aug_seed) if self.aug_seed is not None else None
        order = torch.randperm(n, generator=gen, device=self.images.device) if self.shuffle else None
        augment = self.shuffle and (self.crop_padding > 0 or self.random_flip)
        for i in range(len(self)):
            start_sample = i * self.batch_size
            count = self._global_count(i)
            part = self._part(count)
            if i < start:
                if augment:  # the draws of the skipped batch, without its pixels
                    drawn = count if own_gen is None else part.stop - part.start
                    draw_crop_flip(drawn, self.crop_padding, self.random_flip, gen if own_gen is None else own_gen,
                                   self.images.device)
                continue
            if augment and own_gen is None:  # draw for the whole global batch, keep this process's part
                assert order is not None  # augmenting implies shuffling
                idx = order[start_sample:start_sample + count]
                images = random_crop_flip(self.images[idx], self.crop_padding, self.random_flip, gen)[part]
                labels = self.labels[idx[part]]
            else:
                sl = slice(start_sample + part.start, start_sample + part.stop)
                rows = order[sl] if order is not None else sl
                images, labels = self.images[rows], self.labels[rows]
                if augment:
                    assert own_gen is not None  # the branch above took augmenting without one
                    images = random_crop_flip(images, self.crop_padding, self.random_flip, own_gen)
            if labels.shape[0]:  # a global batch smaller than the world leaves some processes nothing
                yield self.to_input(images), labels
