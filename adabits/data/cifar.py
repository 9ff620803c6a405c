"""CIFAR-10 and CIFAR-100 from their official "python version" folders, loaded once into memory.

The archives unpack to `cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) and
`cifar-100-python/` (train, test, meta). Each file is a pickled dict with bytes keys: b'data' holds
N rows of 3072 uint8 values (1024 red, 1024 green, 1024 blue, row-major 32x32), the labels are
b'labels' (CIFAR-10) or b'fine_labels' (CIFAR-100). `dataset_dir` may name the folder itself or
the folder it was unpacked into.
"""
from __future__ import annotations

import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import DataError, DataOptions, DataShape, ImageSplits, named_folder, register_dataset
from .recipes import CIFAR_MEAN, CIFAR_STD

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarRelease:
    """Where one official release lives and how its files are named."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    url: str
    default_dir: str

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR10 = CifarRelease("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                       ("test_batch",), b"labels", 10,
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "data/cifar10")
CIFAR100 = CifarRelease("CIFAR-100", "cifar-100-python", ("train",), ("test",), b"fine_labels", 100,
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "data/cifar100")


def _read_batch(path: Path, release: CifarRelease) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = torch.as_tensor(batch[b"data"], dtype=torch.uint8)  # a numpy array in the official files
        labels = torch.as_tensor(batch[release.label_key], dtype=torch.long)
    except FileNotFoundError:
        raise DataError(f"{release.title} file missing: {path} (the folder holds an incomplete copy; "
                        f"unpack {release.archive} again)") from None
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"cannot read {release.title} file {path}: {type(exc).__name__}: {exc}") from None
    if data.numel() != labels.numel() * PIXELS:
        raise DataError(f"{release.title} file {path} is corrupt: {data.numel()} pixel values for "
                        f"{labels.numel()} labels (expected {PIXELS} per image)")
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < release.num_classes:
        raise DataError(f"{release.title} file {path} has labels outside 0..{release.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _read(folder: Path, names: tuple[str, ...], release: CifarRelease) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(folder / name, release) for name in names]
    return torch.cat([p[0] for p in parts]).contiguous(), torch.cat([p[1] for p in parts])


def locate(dataset_dir: str | None, release: CifarRelease) -> Path:
    """The release folder: `dataset_dir` itself when it holds any of the release's files, else `dataset_dir/<folder>`."""
    root = Path(dataset_dir or release.default_dir).expanduser()
    if any((root / name).is_file() for name in release.train_files + release.val_files):
        return root
    return root / release.folder


def _download(root: Path, release: CifarRelease) -> None:
    root.mkdir(parents=True, exist_ok=True)
    archive = root / release.archive
    try:
        urllib.request.urlretrieve(release.url, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"downloading {release.title} from {release.url} failed: {exc}") from None


def load_release(opts: DataOptions, release: CifarRelease) -> ImageSplits:
    """The release from the named dataset_dir (or its default folder when unset), refused when it is incomplete."""
    if opts.dataset_dir:
        named_folder(opts.dataset_dir, release.title, f"point it at the folder holding {release.folder}/ "
                     "or run with download=true", created_by_download=opts.download)
    folder = locate(opts.dataset_dir, release)
    if not folder.is_dir() and opts.download:
        _download(folder.parent, release)
    if not folder.is_dir():
        archive = folder.parent / release.archive
        hint = (f"The archive {archive} is there: unpack it with `tar xzf {archive} -C {folder.parent}`."
                if archive.is_file() else
                f"Download {release.url} and unpack it into dataset_dir, or run with download=true.")
        raise DataError(f"{release.title} not found: expected the folder {folder} (the official python version, "
                        f"with {', '.join(release.train_files + release.val_files)}).\n{hint}")
    missing = [name for name in release.train_files + release.val_files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{release.title}: {folder} lacks {', '.join(missing)} (an incomplete copy); "
                        f"unpack {release.archive} there again")
    train_images, train_labels = _read(folder, release.train_files, release)
    val_images, val_labels = _read(folder, release.val_files, release)
    return ImageSplits(train_images, train_labels, val_images, val_labels, num_classes=release.num_classes,
                       mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4, random_flip=True)


@register_dataset("cifar10", shape=DataShape(10, 3, 32))
def build_cifar10(opts: DataOptions) -> ImageSplits:
    return load_release(opts, CIFAR10)


@register_dataset("cifar100", shape=DataShape(100, 3, 32))
def build_cifar100(opts: DataOptions) -> ImageSplits:
    return load_release(opts, CIFAR100)
