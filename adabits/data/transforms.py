"""Augmentation and input conversion on whole batches: one gather per batch, no per-image Python loop."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def draw_crop_flip(n: int, padding: int, flip: bool, gen: torch.Generator,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The random choices of `random_crop_flip` for n images: row and column offsets (n, 1), flips (n, 1) or None.

    A separate function so that a loader skipping a batch (a run resumed mid-epoch) can make the
    same draws without gathering any pixels, and every batch after it stays the same.
    """
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=gen, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=gen, device=device)
    flipped = torch.rand(n, 1, generator=gen, device=device) < 0.5 if flip else None
    return dy, dx, flipped


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
    dy, dx, flipped = draw_crop_flip(n, padding, flip, gen, dev)
    rows = dy + torch.arange(h, device=dev)  # (n, h)
    cols = dx + torch.arange(w, device=dev)  # (n, w)
    if flipped is not None:
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
