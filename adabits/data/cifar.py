"""CIFAR-10 from its official "python version" batches (cifar-10-batches-py), for configs of the original."""
from __future__ import annotations

import pickle
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import torch

from .base import DataError, ImageSplits, register_dataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
VAL = ["test_batch"]


def _read(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(torch.as_tensor(batch[b"data"]).reshape(-1, 3, 32, 32))
            labels.append(torch.as_tensor(batch[b"labels"], dtype=torch.long))
        except (OSError, pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as exc:
            raise DataError(f"cannot read CIFAR-10 file {folder / name}: {exc}") from None
    return torch.cat(images).contiguous(), torch.cat(labels)


def _download(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    try:
        urllib.request.urlretrieve(URL, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"downloading CIFAR-10 from {URL} failed: {exc}") from None


@register_dataset("cifar10")
def build_cifar10(opts: Any) -> ImageSplits:
    root = Path(opts.dataset_dir or "data/cifar10").expanduser()
    folder = root / FOLDER
    if not folder.is_dir() and opts.download:
        _download(root)
    if not folder.is_dir():
        raise DataError(
            f"CIFAR-10 not found: expected the folder {folder} (the official python version).\n"
            f"Download {URL} and unpack it into dataset_dir, or run with download=true.")
    train_images, train_labels = _read(folder, TRAIN)
    val_images, val_labels = _read(folder, VAL)
    return ImageSplits(train_images, train_labels, val_images, val_labels, num_classes=10,
                       mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                       crop_padding=4, random_flip=True)
