"""ImageNet-1k (ILSVRC2012) as class folders of JPEGs: `imagenet1k` and the original's `imagenet1k_val50k`.

The official validation archive unpacks flat (50,000 files in one folder); like the original, this
expects it sorted into val/<wnid>/ folders, as the usual preparation scripts do.
"""
from __future__ import annotations

import random

from .base import DataError, DataOptions, register_dataset
from .folder import FolderLayout, FolderSplits, folder_shape, load_folders

LAYOUT = FolderLayout("ImageNet", "train", "val", "JPEG", "imagenet1k_basic", subfolders=("imagenet", "ILSVRC2012"))
#: how many training images `imagenet1k_val50k` holds out
HELD_OUT = 50_000


@register_dataset("imagenet1k", "imagenet", shape=folder_shape(1000, LAYOUT))
def build_imagenet(opts: DataOptions) -> FolderSplits:
    _, classes, train, val = load_folders(opts, LAYOUT)
    return FolderSplits(train, val, tuple(classes), LAYOUT.default_transforms)


@register_dataset("imagenet1k_val50k", shape=folder_shape(1000, LAYOUT))
def build_imagenet_val50k(opts: DataOptions) -> FolderSplits:
    """Train on train/ minus 50,000 images and validate on those 50,000 (val/ stays untouched).

    The held-out images are exactly the original's: it shuffled ImageFolder's sample list with
    `random.seed(random_seed); random.shuffle(samples)` and dropped the first 50,000 from training.
    """
    root, classes, train, _ = load_folders(opts, LAYOUT)
    if len(train) <= HELD_OUT:
        raise DataError(f"imagenet1k_val50k holds out {HELD_OUT} training images for validation, but "
                        f"{root / LAYOUT.train} has only {len(train)}")
    order = list(range(len(train)))
    random.Random(opts.random_seed).shuffle(order)
    return FolderSplits(train.subset(order[HELD_OUT:]), train.subset(order[:HELD_OUT]),
                        tuple(classes), LAYOUT.default_transforms)
