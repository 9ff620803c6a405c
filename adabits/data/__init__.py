"""Datasets as in-memory uint8 tensors or image folders.

The engine uses two doors: `build_loaders(opts)` reads the data, `dataset_shape(opts)` tells its
shape without reading anything (for loading a trained model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from . import cifar, cinic, fashion_mnist, imagenet, synthetic  # noqa: F401  (register the datasets)
from .base import (
    DATASET_SHAPES,
    DATASETS,
    BatchLoader,
    DataError,
    DataOptions,
    DataShape,
    ImageSplits,
    canonical_name,
    list_datasets,
    register_dataset,
)
from .folder import FOLDER_CHANNELS, FolderSplits
from .folder_loader import FolderLoader, folder_loaders
from .loader import TensorLoader
from .recipes import apply_to_memory_dataset
from .transforms import ToModelInput, random_crop_flip

Split = Literal["train", "val"]

__all__ = ["BatchLoader", "DataError", "DataOptions", "DataShape", "FolderLoader", "ImageSplits", "Loaders",
           "TensorLoader", "ToModelInput", "build_loader", "build_loaders", "build_splits", "dataset_shape", "list_datasets",
           "random_crop_flip", "register_dataset"]


@dataclass
class Loaders:
    train: BatchLoader
    val: BatchLoader
    num_classes: int
    in_chans: int
    image_size: int


def _unknown(name: str) -> DataError:
    return DataError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")


def dataset_shape(cfg: DataOptions) -> DataShape:
    """The dataset's classes, channels and image size from its registered metadata: no file is read.

    The config's num_classes / in_chans / image_size, where set, take precedence.
    """
    name = canonical_name(cfg.dataset)
    if name not in DATASETS:
        raise _unknown(cfg.dataset)
    rule = DATASET_SHAPES.get(name)
    if rule is None:
        if cfg.num_classes is None or cfg.in_chans is None or cfg.image_size is None:
            raise DataError(f"dataset {cfg.dataset} registers no shape; set num_classes, in_chans and image_size "
                            "in the config")
        return DataShape(cfg.num_classes, cfg.in_chans, cfg.image_size)
    shape = rule if isinstance(rule, DataShape) else rule(cfg)
    return DataShape(cfg.num_classes or shape.num_classes, cfg.in_chans or shape.in_chans,
                     cfg.image_size or shape.image_size)


def build_splits(cfg: DataOptions) -> ImageSplits | FolderSplits:
    """Load the dataset named by `cfg.dataset` (DataError when it is unknown or missing)."""
    builder = DATASETS.get(canonical_name(cfg.dataset))
    if builder is None:
        raise _unknown(cfg.dataset)
    splits = builder(cfg)
    if isinstance(splits, FolderSplits):
        _check_channels(cfg, FOLDER_CHANNELS)
        return splits
    splits = apply_to_memory_dataset(splits, cfg.data_transforms, cfg.dataset)
    if cfg.image_size is not None and cfg.image_size != splits.image_size:
        raise DataError(f"dataset {cfg.dataset} has {splits.image_size}x{splits.image_size} images, "
                        f"but the config asks for image_size {cfg.image_size}; remove image_size or set it to {splits.image_size}")
    _check_channels(cfg, splits.in_chans)
    return splits


def _check_channels(cfg: DataOptions, in_chans: int) -> None:
    """The model's first conv reads the data's channels: a config asking for others is refused before any step."""
    if cfg.in_chans is not None and cfg.in_chans != in_chans:
        raise DataError(f"dataset {cfg.dataset} has {in_chans}-channel images, but the config sets in_chans "
                        f"{cfg.in_chans}; remove in_chans or set it to {in_chans}")


def build_loaders(cfg: DataOptions, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> Loaders:
    """Train loader (shuffled, augmented) and val loader, whose batches arrive on `device`.

    In-memory datasets are moved to `device` whole; folder datasets are decoded in
    `data_loader_workers` processes. With `world_size > 1` both loaders yield this process's part of
    every global batch (see TensorLoader and data/sharding.py); `use_diff_seed` gives each process its
    own augmentation stream.
    """
    splits = build_splits(cfg)
    if isinstance(splits, FolderSplits):
        train_loader, val_loader, size = folder_loaders(splits, cfg, device, rank, world_size)
        return Loaders(_with_batches(train_loader, cfg), val_loader, splits.num_classes, FOLDER_CHANNELS, size)
    return Loaders(_with_batches(_memory_loader(splits, cfg, "train", device, rank, world_size), cfg),
                   _memory_loader(splits, cfg, "val", device, rank, world_size),
                   splits.num_classes, splits.in_chans, splits.image_size)


def _with_batches(train: BatchLoader, cfg: DataOptions) -> BatchLoader:
    """A training loader that yields no batch would train nothing and report success: refuse it."""
    if len(train) == 0:
        raise DataError(f"dataset {cfg.dataset} has {train.num_samples} training images, fewer than batch_size "
                        f"{cfg.batch_size} with drop_last: true, so no batch is left; lower batch_size or set drop_last: false")
    return train


def build_loader(cfg: DataOptions, split: Split, device: torch.device | str = "cpu", rank: int = 0,
                 world_size: int = 1) -> tuple[BatchLoader, DataShape]:
    """One loader (`test` needs the validation split, `calibrate` training batches), of process `rank` of
    `world_size`, and the dataset's shape; an in-memory dataset moves only that split to `device`."""
    splits = build_splits(cfg)
    if isinstance(splits, FolderSplits):
        train_loader, val_loader, size = folder_loaders(splits, cfg, device, rank, world_size)
        return (train_loader if split == "train" else val_loader), DataShape(splits.num_classes, FOLDER_CHANNELS, size)
    return (_memory_loader(splits, cfg, split, device, rank, world_size),
            DataShape(splits.num_classes, splits.in_chans, splits.image_size))


def _memory_loader(splits: ImageSplits, cfg: DataOptions, split: Split, device: torch.device | str,
                   rank: int = 0, world_size: int = 1) -> TensorLoader:
    to_input = ToModelInput(cfg.normalize, splits.mean, splits.std, cfg.channels_last)
    if split == "val":
        return TensorLoader(splits.val_images.to(device), splits.val_labels.to(device),
                            cfg.eval_batch_size or cfg.batch_size, to_input, rank=rank, world_size=world_size)
    padding = splits.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    flip = splits.random_flip if cfg.random_flip is None else cfg.random_flip
    own_augmentation = world_size > 1 and cfg.use_diff_seed
    return TensorLoader(splits.train_images.to(device), splits.train_labels.to(device), cfg.batch_size, to_input,
                        shuffle=True, drop_last=cfg.drop_last, crop_padding=padding, random_flip=flip,
                        seed=cfg.random_seed, rank=rank, world_size=world_size,
                        aug_seed=cfg.random_seed + rank if own_augmentation else None)
