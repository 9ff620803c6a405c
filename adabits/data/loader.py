"""An in-memory batch loader: shuffles by index, slices, augments on the batch's device."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .transforms import ToModelInput, random_crop_flip


@dataclass
class TensorLoader:
    """Iterates (inputs, labels) batches of an in-memory uint8 dataset.

    The order and the augmentation of epoch e depend only on (seed, e), so a run resumed at
    epoch e sees exactly the batches an uninterrupted run would have seen.
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def _generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.images.device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        return gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        gen = self._generator()
        order = torch.randperm(n, generator=gen, device=self.images.device) if self.shuffle else None
        augment = self.shuffle and (self.crop_padding > 0 or self.random_flip)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else sl
            images, labels = self.images[idx], self.labels[idx]
            if augment:
                images = random_crop_flip(images, self.crop_padding, self.random_flip, gen)
            yield self.to_input(images), labels
