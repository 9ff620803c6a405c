"""Fashion-MNIST (60,000 + 10,000 grey 28x28 images, 10 classes) from its official IDX files.

Debian's package `dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist; a
`dataset_dir` holding the same files (gzipped or not, also torchvision's FashionMNIST/raw layout)
works too, and `download: true` fetches them from the official mirror into `dataset_dir`.
"""
from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from .base import DataError, DataOptions, DataShape, ImageSplits, register_dataset
from .idx import read_idx
from ..atomic import atomic_write

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_DIR = Path("data/fashion_mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
MEAN = (0.2860,)
STD = (0.3530,)


def _candidate_dirs(dataset_dir: str | None) -> list[Path]:
    dirs: list[Path] = []
    if dataset_dir:
        base = Path(dataset_dir).expanduser()
        dirs += [base, base / "fashion-mnist", base / "fashion_mnist", base / "FashionMNIST" / "raw"]
    return dirs + [SYSTEM_DIR]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def locate(dataset_dir: str | None) -> dict[str, Path] | None:
    """The first directory that holds all four files, as a dict of paths; None when none does."""
    for directory in _candidate_dirs(dataset_dir):
        found = {key: _find(directory, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def download(target: Path) -> None:
    """Fetch the four official gzipped files into `target`, each written atomically (never half a file)."""
    target.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        dest = target / (stem + ".gz")
        if dest.is_file():
            continue
        try:
            with urllib.request.urlopen(URL + stem + ".gz", timeout=60) as response, atomic_write(dest) as f:
                shutil.copyfileobj(response, f)
        except OSError as exc:
            raise DataError(f"downloading Fashion-MNIST from {URL} failed: {exc}") from None


def missing_message(dataset_dir: str | None) -> str:
    where = ", ".join(str(d) for d in _candidate_dirs(dataset_dir))
    return (
        f"Fashion-MNIST not found (looked in: {where}).\n"
        "Get it one of these ways:\n"
        "  sudo apt-get install dataset-fashion-mnist\n"
        f"  or put the official files ({', '.join(s + '.gz' for s in FILES.values())}) into dataset_dir\n"
        "  or run with download=true (fetches them into dataset_dir, default data/fashion_mnist)"
    )


@register_dataset("fashion_mnist", "FashionMNIST", "fashion-mnist", shape=DataShape(10, 1, 28))
def build_fashion_mnist(opts: DataOptions) -> ImageSplits:
    """Load the four files once into uint8 tensors of shape (N, 1, 28, 28)."""
    files = locate(opts.dataset_dir)
    if files is None and opts.download:
        download(Path(opts.dataset_dir) if opts.dataset_dir else DEFAULT_DOWNLOAD_DIR)
        files = locate(opts.dataset_dir or str(DEFAULT_DOWNLOAD_DIR))
    if files is None:
        raise DataError(missing_message(opts.dataset_dir))
    tensors = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "val"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"Fashion-MNIST {split} files disagree: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    return ImageSplits(
        train_images=tensors["train_images"].unsqueeze(1).contiguous(),
        train_labels=tensors["train_labels"].long(),
        val_images=tensors["val_images"].unsqueeze(1).contiguous(),
        val_labels=tensors["val_labels"].long(),
        num_classes=10,
        mean=MEAN,
        std=STD,
        crop_padding=2,
        random_flip=True,
    )
