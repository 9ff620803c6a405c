"""What every dataset hands to the engine: uint8 image tensors in memory, plus a registry.

Small datasets (Fashion-MNIST, CIFAR) fit in memory many times over, so they are loaded once as
uint8 tensors and batched by slicing; the data path then costs nothing next to the model.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import DataError as DataError  # re-exported: adabits.data.DataError


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

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch `start` on, as a full pass yields them (resuming mid-epoch)."""
        ...

    @property
    def num_samples(self) -> int: ...

    def share(self, step: int) -> float: ...


class DataOptions(Protocol):
    """The typed view of a config that the data package reads (TrainConfig satisfies it)."""

    dataset: str
    dataset_dir: str | None
    download: bool
    data_transforms: str | None
    data_loader_workers: int
    drop_last: bool
    batch_size: int
    eval_batch_size: int | None
    crop_padding: int | None
    random_flip: bool | None
    normalize: bool
    channels_last: bool
    num_classes: int | None
    in_chans: int | None
    image_size: int | None
    random_seed: int
    use_diff_seed: bool
    synthetic_train_size: int
    synthetic_val_size: int


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know of its data: classes, input channels, image side."""

    num_classes: int
    in_chans: int
    image_size: int


DatasetBuilder = Callable[[DataOptions], Any]  # -> ImageSplits, or FolderSplits for a dataset of image folders
#: a dataset's shape without reading it: fixed, or computed from the options (synthetic, folder recipes)
ShapeRule = DataShape | Callable[[DataOptions], DataShape]

DATASETS: dict[str, DatasetBuilder] = {}
DATASET_SHAPES: dict[str, ShapeRule] = {}


def canonical_name(name: str) -> str:
    """`FashionMNIST`, `fashion-mnist` and `fashion_mnist` are one dataset: compare lowercase alphanumerics."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def register_dataset(*names: str, shape: ShapeRule | None = None) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator: make a builder reachable through `dataset: <name>` in a config.

    `shape` tells the dataset's DataShape without reading a file, so that loading a trained model
    (export, profile) never walks a dataset; see `adabits.data.dataset_shape`.
    """

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        for name in names:
            DATASETS[canonical_name(name)] = fn
            if shape is not None:
                DATASET_SHAPES[canonical_name(name)] = shape
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def shown(path: str | os.PathLike[str]) -> str:
    """A path as a one-line message shows it: a file name may hold a line break or another control character."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in os.fspath(path))


def described(exc: BaseException) -> str:
    """A foreign error as one line, its type first: the messages of pickle, zlib and Pillow may span lines."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def named_folder(dataset_dir: str, title: str, hint: str, *, created_by_download: bool = False) -> Path:
    """The folder `dataset_dir` names, refused in one line when it is a file or missing.

    A dataset_dir the user named is the data, never a hint: no builder falls back to another copy
    when it is unusable. `created_by_download` allows a missing folder that `download: true` creates.
    """
    folder = Path(dataset_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{title}: dataset_dir {folder} is a file, not a folder; {hint}")
    if not folder.exists() and not created_by_download:
        raise DataError(f"{title}: dataset_dir {folder} does not exist; {hint}")
    return folder
