"""Per-image decoding and augmentation for folder datasets: Pillow for decode/resize, torch for the rest.

torchvision would do this, but its PyPI build does not import beside the CPU torch this project pins,
so the five operations the original recipes use live here, with torchvision's semantics
(RandomResizedCrop's sampling, Resize of the short side, CenterCrop's rounding, zero-padded
RandomCrop, bilinear resampling). Every random choice comes from the `random.Random` handed in, which
the loader seeds from (seed, epoch, sample index): a run is reproducible with any number of workers.
"""
from __future__ import annotations

import math
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .recipes import TransformRecipe

RATIO = (3 / 4, 4 / 3)


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to 8-bit RGB (grey, palette and CMYK files included), as ImageFolder does.

    Only a regular file is read: a FIFO or a device with an image's name (or a link to one) would block
    the read forever, so it is opened without blocking and refused with OSError.
    """
    with open(path, "rb", opener=_open_nonblocking) as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
            raise OSError(f"it is {kind}, not a regular file")
        img = Image.open(f)
        return img.convert("RGB")


def resized_crop_box(width: int, height: int, scale: tuple[float, float],
                     rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, w, h): 10 tries at a random area and aspect, then a center crop."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float], rng: random.Random) -> Image.Image:
    """Crop, then resize (as torchvision: the filter sees no pixels outside the crop)."""
    left, top, w, h = resized_crop_box(img.width, img.height, scale, rng)
    return img.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` (the longer one truncated, as torchvision's Resize(int))."""
    short, long = sorted((img.width, img.height))
    new_long = int(size * long / short)
    new = (size, new_long) if img.width <= img.height else (new_long, size)
    return img if new == img.size else img.resize(new, Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> uint8 tensor (3, H, W)."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window (zero-padded first if the image is smaller), rounding as torchvision."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        ph, pw = max(size - h, 0), max(size - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[:, top:top + size, left:left + size]


def pad_random_crop(x: torch.Tensor, size: int, padding: int, rng: random.Random) -> torch.Tensor:
    """RandomCrop(size, padding): zero-pad every side, then a uniformly placed size x size window."""
    if padding > 0:
        x = F.pad(x, (padding,) * 4)
    x = center_crop(x, size) if min(x.shape[-2:]) < size else x
    h, w = x.shape[-2:]
    top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    return x[:, top:top + size, left:left + size]


@dataclass(frozen=True)
class ImageTransform:
    """One recipe at one output size, for training (random) or evaluation (fixed): image -> uint8 (3, size, size)."""

    recipe: TransformRecipe
    size: int
    train: bool
    padding: int
    flip: bool

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        rule = self.recipe.crop
        if rule == "resized_crop" and self.train:
            x = to_tensor(random_resized_crop(img, self.size, (self.recipe.min_scale, 1.0), rng))
        elif rule == "resized_crop":
            x = center_crop(to_tensor(resize_short_side(img, int(self.size / self.recipe.eval_crop_fraction))), self.size)
        elif self.train:
            x = pad_random_crop(to_tensor(img), self.size, self.padding, rng)
        else:
            x = center_crop(to_tensor(img), self.size)
        if self.train and self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return x.contiguous()
