"""What every dataset hands to the engine: uint8 image tensors in memory, plus a registry.

Small datasets (Fashion-MNIST, CIFAR) fit in memory many times over, so they are loaded once as
uint8 tensors and batched by slicing; the data path then costs nothing next to the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable, Protocol

import torch

from ..errors import DataError


@dataclass(frozen=True)
class ImageSplits:
    """Train and validation images (N, C, H, W) uint8 and labels (N,) int64, plus what the model needs."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # the dataset's customary random-crop padding (0 = no crop)
    random_flip: bool  # the dataset's customary horizontal flip

    @property
    def in_chans(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])


class BatchLoader(Protocol):
    """What the Trainer iterates: (inputs, labels) batches on the device, reproducible per epoch."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    @property
    def num_samples(self) -> int: ...

    def share(self, step: int) -> float: ...


DatasetBuilder = Callable[[Any], Any]  # -> ImageSplits, or FolderSplits for a dataset of image folders

DATASETS: dict[str, DatasetBuilder] = {}


def canonical_name(name: str) -> str:
    """`FashionMNIST`, `fashion-mnist` and `fashion_mnist` are one dataset: compare lowercase alphanumerics."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def register_dataset(*names: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator: make a builder reachable through `dataset: <name>` in a config."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        for name in names:
            DATASETS[canonical_name(name)] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(DATASETS)
