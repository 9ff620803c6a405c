"""A synthetic image dataset of any shape and class count, for tests and speed measurements.

Each class has its own random mean image; samples are that mean plus noise, so a network can
learn it in a few steps and tests can check that training actually lowers the error.
"""
from __future__ import annotations

import torch

from .base import DataError, DataOptions, DataShape, ImageSplits, register_dataset


def make_images(n: int, num_classes: int, in_chans: int, size: int, gen: torch.Generator,
                prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    noise = torch.randn(n, in_chans, size, size, generator=gen) * 40.0
    images = (prototypes[labels] + noise).clamp(0, 255).round().to(torch.uint8)
    return images, labels


def synthetic_shape(opts: DataOptions) -> DataShape:
    return DataShape(opts.num_classes or 10, opts.in_chans or 3, opts.image_size or 32)


@register_dataset("synthetic", shape=synthetic_shape)
def build_synthetic(opts: DataOptions) -> ImageSplits:
    """Sizes come from `synthetic_train_size`, `synthetic_val_size`, `in_chans`, `image_size`, `num_classes`."""
    if opts.dataset_dir:
        raise DataError(f"dataset synthetic generates its images and reads no files, but dataset_dir is set "
                        f"({opts.dataset_dir}); remove dataset_dir or name the dataset it holds")
    num_classes = opts.num_classes or 10
    in_chans = opts.in_chans or 3
    size = opts.image_size or 32
    gen = torch.Generator().manual_seed(opts.random_seed)
    prototypes = torch.rand(num_classes, in_chans, size, size, generator=gen) * 255.0
    train = make_images(opts.synthetic_train_size, num_classes, in_chans, size, gen, prototypes)
    val = make_images(opts.synthetic_val_size, num_classes, in_chans, size, gen, prototypes)
    return ImageSplits(train[0], train[1], val[0], val[1], num_classes=num_classes,
                       mean=(0.5,) * in_chans, std=(0.25,) * in_chans, crop_padding=0, random_flip=False)
