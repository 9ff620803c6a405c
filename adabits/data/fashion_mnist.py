"""Fashion-MNIST (60,000 + 10,000 grey 28x28 images, 10 classes) from its official IDX files.

Debian's package `dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist, which is
read when `dataset_dir` is not set. A named `dataset_dir` must hold the same files (gzipped or not,
also torchvision's FashionMNIST/raw layout) or is refused, never replaced by the system copy;
`download: true` fetches the missing ones from the official mirror into it.
"""
from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import torch

from ..atomic import atomic_write
from .base import DataError, DataOptions, DataShape, ImageSplits, named_folder, register_dataset
from .idx import read_idx

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_DIR = Path("data/fashion_mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10
SIDE = 28
MEAN = (0.2860,)
STD = (0.3530,)


#: where under a named dataset_dir the four files may lie (itself, or torchvision's and common layouts)
LAYOUTS = ("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw")


def _candidate_dirs(dataset_dir: str | None) -> list[Path]:
    """The layouts under a named dataset_dir, or the system package when dataset_dir is not set (never both)."""
    if not dataset_dir:
        return [SYSTEM_DIR]
    base = Path(dataset_dir).expanduser()
    return [base / layout for layout in LAYOUTS]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _found(directory: Path) -> dict[str, Path | None]:
    return {key: _find(directory, stem) for key, stem in FILES.items()}


def locate(dataset_dir: str | None) -> dict[str, Path] | None:
    """The four files in the first candidate directory that holds them all; None when none does."""
    for directory in _candidate_dirs(dataset_dir):
        found = _found(directory)
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
    """Why Fashion-MNIST is not there and how to get it: for the system package, or for a named dataset_dir."""
    if dataset_dir:
        return _incomplete_message(dataset_dir)
    return (
        f"Fashion-MNIST not found in {SYSTEM_DIR} (dataset_dir is not set); get it with "
        "`sudo apt-get install dataset-fashion-mnist`, "
        f"or put the official files ({', '.join(s + '.gz' for s in FILES.values())}) into a folder and set dataset_dir, "
        f"or run with download=true (fetches them into {DEFAULT_DOWNLOAD_DIR})"
    )


def _incomplete_message(dataset_dir: str) -> str:
    """One line naming the files a named dataset_dir lacks (in its layout that holds the most of them)."""
    best = max(_candidate_dirs(dataset_dir), key=lambda d: sum(p is not None for p in _found(d).values()))
    missing = [stem for key, stem in FILES.items() if _found(best)[key] is None]
    return (f"Fashion-MNIST: dataset_dir {best} lacks {', '.join(missing)} (gzipped or not); put the official files "
            f"there, run with download=true to fetch them into {Path(dataset_dir).expanduser()}, or remove "
            f"dataset_dir to use the system package in {SYSTEM_DIR}")


def _located(opts: DataOptions) -> dict[str, Path]:
    """The four files: from the named dataset_dir (downloaded there if asked), else the system package."""
    if opts.dataset_dir:
        hint = (f"point it at the folder holding {', '.join(FILES.values())}, or remove dataset_dir to use the "
                f"system package in {SYSTEM_DIR}")
        target = named_folder(opts.dataset_dir, "Fashion-MNIST", hint, created_by_download=opts.download)
    else:
        target = DEFAULT_DOWNLOAD_DIR
    files = locate(opts.dataset_dir)
    if files is None and opts.download:
        download(target)
        files = locate(str(target))
    if files is None:
        raise DataError(missing_message(opts.dataset_dir))
    return files


def _check_split(images: torch.Tensor, labels: torch.Tensor, images_path: Path, labels_path: Path) -> None:
    """Refuse a pair of files that would train on something else than Fashion-MNIST: images not N x 28 x 28
    (the registered shape, which a trained model is rebuilt with), no images, a count the labels do not
    match, or a label outside 0..9 (it would crash the loss later, mid-run)."""
    if images.ndim != 3 or tuple(images.shape[1:]) != (SIDE, SIDE):
        raise DataError(f"{images_path} holds an array of shape {tuple(images.shape)}; Fashion-MNIST's images "
                        f"are (N, {SIDE}, {SIDE})")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds an array of shape {tuple(labels.shape)}; Fashion-MNIST's labels "
                        "are (N,), one byte per image")
    if images.shape[0] == 0:
        raise DataError(f"{images_path} holds no images")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
                        "they must be the files of one split")
    top = int(labels.max())
    if top >= NUM_CLASSES:
        raise DataError(f"{labels_path} holds label {top}; Fashion-MNIST's labels are 0..{NUM_CLASSES - 1}")


@register_dataset("fashion_mnist", "FashionMNIST", "fashion-mnist", shape=DataShape(NUM_CLASSES, 1, SIDE))
def build_fashion_mnist(opts: DataOptions) -> ImageSplits:
    """Load the four files once into uint8 tensors of shape (N, 1, 28, 28)."""
    files = _located(opts)
    tensors = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "val"):
        _check_split(tensors[f"{split}_images"], tensors[f"{split}_labels"], files[f"{split}_images"],
                     files[f"{split}_labels"])
    return ImageSplits(
        train_images=tensors["train_images"].unsqueeze(1).contiguous(),
        train_labels=tensors["train_labels"].long(),
        val_images=tensors["val_images"].unsqueeze(1).contiguous(),
        val_labels=tensors["val_labels"].long(),
        num_classes=NUM_CLASSES,
        mean=MEAN,
        std=STD,
        crop_padding=2,
        random_flip=True,
    )
