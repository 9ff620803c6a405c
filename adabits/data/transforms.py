"""Augmentation and input conversion on whole batches: one gather per batch, no per-image Python loop."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding `padding`) and horizontal flip of a uint8 batch (N, C, H, W).

    Every image gets its own offset and flip, drawn from `gen` on the batch's device; all of them
    are applied by one `gather` of flat pixel indices into the padded batch.
    """
    if padding <= 0 and not flip:
        return images
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding,) * 4) if padding > 0 else images
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=gen, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=gen, device=dev)
    rows = dy + torch.arange(h, device=dev)  # (n, h)
    cols = dx + torch.arange(w, device=dev)  # (n, w)
    if flip:
        flipped = torch.rand(n, 1, generator=gen, device=dev) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    index = (rows[:, :, None] * padded.shape[-1] + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)


@dataclass(frozen=True)
class ToModelInput:
    """uint8 batch -> float input: the raw 0..255 values (`normalize: false`, docs/data.md) or (x/255 - mean)/std."""

    normalize: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.normalize:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x / 255.0 - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
