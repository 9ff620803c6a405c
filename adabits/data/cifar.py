"""CIFAR-10 and CIFAR-100 from their official "python version" folders, loaded once into memory.

The archives unpack to `cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) and
`cifar-100-python/` (train, test, meta). Each file is a pickled dict with bytes keys: b'data' holds
N rows of 3072 uint8 values (1024 red, 1024 green, 1024 blue, row-major 32x32), the labels are
b'labels' (CIFAR-10) or b'fine_labels' (CIFAR-100). `dataset_dir` may name the folder itself or
the folder it was unpacked into.
"""
from __future__ import annotations

import codecs
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DataError, DataOptions, DataShape, ImageSplits, described, named_folder, register_dataset
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


def _empty_bytes(*args: object) -> bytes:
    """`bytes()`, as Python 3 pickles b"" below protocol 3; with an argument (a size) it could allocate any amount."""
    if args:
        raise pickle.UnpicklingError("it calls bytes() with arguments, which no CIFAR batch does")
    return b""


#: every global the official files (pickled by Python 2 and numpy 1) or a copy re-pickled by Python 3 and numpy 2
#: (protocol 0 to 5) refers to, resolved to the objects themselves: numpy's array reconstructors, ndarray, dtype,
#: and how Python 3 writes bytes below protocol 3 (`_codecs.encode`, and `bytes()` for b"")
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **{(module, "_reconstruct"): np.empty(0).__reduce__()[0]
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): np.empty(0).__reduce_ex__(5)[0]
       for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, numbers, bytes and numpy arrays, and nothing else.

    `pickle.load` imports and calls whatever a file names: a damaged or crafted batch file could run
    code or import any module. This one resolves only `_ALLOWED_GLOBALS`, and refuses the rest.
    """

    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR batch does")
        return found


def _unpickle(path: Path, release: CifarRelease) -> object:
    """The file's pickled object, through `_BatchUnpickler`; DataError naming the file when it is not a pickle."""
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{release.title} file missing: {path} (the folder holds an incomplete copy; "
                        f"unpack {release.archive} again)") from None
    except Exception as exc:  # damaged pickles meet the unpickler with any error type (EOF, Overflow, Memory, Lookup...)
        raise DataError(f"cannot read {release.title} file {path}: {described(exc)}") from None


def _labels(value: object) -> list[int] | None:
    """The labels as Python ints (a list of ints in the official files, an integer array in a re-pickled copy);
    None when they are neither (floats would be truncated to other classes without a word)."""
    if isinstance(value, list) and all(type(v) is int for v in value):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        return [int(v) for v in value.tolist()]
    return None


def _read_batch(path: Path, release: CifarRelease) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file as (N, 3, 32, 32) uint8 images and (N,) labels, each checked against the official format.

    A file that loads but is not a batch (another dict, pixels of another type or width, labels that are
    not integers in 0..classes-1, or not one per image, or none at all) is a DataError naming it: it would
    otherwise train on something else, or crash the loss mid-run.
    """
    batch = _unpickle(path, release)
    where = f"{release.title} file {path}"
    if not isinstance(batch, dict):
        raise DataError(f"{where} is not a batch: it holds a {type(batch).__name__}, not a dict")
    missing = [repr(key) for key in (b"data", release.label_key) if key not in batch]
    if missing:
        raise DataError(f"{where} is not a batch: it lacks {' and '.join(missing)}")
    data, labels = batch[b"data"], _labels(batch[release.label_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS):
        found = (f"an array of {data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray)
                 else f"a {type(data).__name__}")
        raise DataError(f"{where} is corrupt: b'data' is {found}, expected N rows of {PIXELS} unsigned bytes")
    if labels is None:
        raise DataError(f"{where} is corrupt: {release.label_key!r} is not a list of integers")
    if data.shape[0] != len(labels):
        raise DataError(f"{where} is corrupt: {data.shape[0]} images for {len(labels)} labels")
    if not labels:
        raise DataError(f"{where} holds no images")
    low, high = min(labels), max(labels)
    if low < 0 or high >= release.num_classes:
        raise DataError(f"{where} has labels outside 0..{release.num_classes - 1} (from {low} to {high})")
    return torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32), torch.tensor(labels, dtype=torch.long)


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
        hint = (f"the archive {archive} is there: unpack it with `tar xzf {archive} -C {folder.parent}`"
                if archive.is_file() else
                f"download {release.url} and unpack it into dataset_dir, or run with download=true")
        raise DataError(f"{release.title} not found: expected the folder {folder} (the official python version, "
                        f"with {', '.join(release.train_files + release.val_files)}); {hint}")
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
