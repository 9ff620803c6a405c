"""Datasets as in-memory uint8 tensors or image folders; `build_loaders(cfg)` is the only door the engine uses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import cifar, cinic, fashion_mnist, imagenet, synthetic  # noqa: F401  (register the datasets)
from .base import DATASETS, BatchLoader, DataError, ImageSplits, canonical_name, list_datasets, register_dataset
from .folder import FolderSplits
from .folder_loader import FolderLoader, folder_loaders
from .loader import TensorLoader
from .recipes import apply_to_memory_dataset
from .transforms import ToModelInput, random_crop_flip

__all__ = ["BatchLoader", "DataError", "FolderLoader", "ImageSplits", "Loaders", "TensorLoader", "ToModelInput",
           "build_loaders", "build_splits", "list_datasets", "random_crop_flip", "register_dataset"]


@dataclass
class Loaders:
    train: BatchLoader
    val: BatchLoader
    num_classes: int
    in_chans: int
    image_size: int


def build_splits(cfg: Any) -> ImageSplits | FolderSplits:
    """Load the dataset named by `cfg.dataset` (DataError when it is unknown or missing)."""
    builder = DATASETS.get(canonical_name(cfg.dataset))
    if builder is None:
        raise DataError(f"unknown dataset {cfg.dataset!r}; known: {', '.join(list_datasets())}")
    splits = builder(cfg)
    if isinstance(splits, FolderSplits):
        return splits
    splits = apply_to_memory_dataset(splits, cfg.data_transforms, cfg.dataset)
    if cfg.image_size is not None and cfg.image_size != splits.image_size:
        raise DataError(f"dataset {cfg.dataset} has {splits.image_size}x{splits.image_size} images, "
                        f"but the config asks for image_size {cfg.image_size}; remove image_size or set it to {splits.image_size}")
    return splits


def build_loaders(cfg: Any, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> Loaders:
    """Train loader (shuffled, augmented) and val loader, whose batches arrive on `device`.

    In-memory datasets are moved to `device` whole; folder datasets are decoded in
    `data_loader_workers` processes. With `world_size > 1` both loaders yield this process's part of
    every global batch (see TensorLoader and data/sharding.py); `use_diff_seed` gives each process its
    own augmentation stream.
    """
    splits = build_splits(cfg)
    if isinstance(splits, FolderSplits):
        train_loader, val_loader, size = folder_loaders(splits, cfg, device, rank, world_size)
        return Loaders(train_loader, val_loader, splits.num_classes, 3, size)
    padding = splits.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    flip = splits.random_flip if cfg.random_flip is None else cfg.random_flip
    to_input = ToModelInput(cfg.normalize, splits.mean, splits.std, cfg.channels_last)
    own_augmentation = world_size > 1 and getattr(cfg, "use_diff_seed", False)
    train = TensorLoader(splits.train_images.to(device), splits.train_labels.to(device), cfg.batch_size, to_input,
                         shuffle=True, drop_last=cfg.drop_last, crop_padding=padding, random_flip=flip,
                         seed=cfg.random_seed, rank=rank, world_size=world_size,
                         aug_seed=cfg.random_seed + rank if own_augmentation else None)
    val = TensorLoader(splits.val_images.to(device), splits.val_labels.to(device), cfg.eval_batch_size or cfg.batch_size,
                       to_input, rank=rank, world_size=world_size)
    return Loaders(train, val, splits.num_classes, splits.in_chans, splits.image_size)
