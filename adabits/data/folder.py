"""Datasets stored as class folders of image files (ImageNet, CINIC-10): scanning and layout checks.

The scan mirrors torchvision's ImageFolder: classes are the sorted sub-folder names, files are
walked in sorted order with the same extensions, so sample i here is sample i there (the
`imagenet1k_val50k` split depends on it). Paths are kept in one bytes blob with an offset table
rather than a million Python strings, so forked loader workers do not copy them page by page.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import DataError, DataOptions, DataShape, named_folder, shown
from .recipes import recipe_named

#: folder datasets decode every image as RGB
FOLDER_CHANNELS = 3
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class PathTable:
    """An immutable list of strings packed into one bytes object (cheap to share with forked workers)."""

    def __init__(self, paths: list[str]) -> None:
        # os.fsencode, not str.encode: a file name that is not UTF-8 comes from os.walk with surrogate escapes
        encoded = [os.fsencode(p) for p in paths]
        self.blob = b"".join(encoded)
        lengths = torch.tensor([0] + [len(e) for e in encoded], dtype=torch.int64)
        self.offsets = lengths.cumsum(0)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.blob[int(self.offsets[i]):int(self.offsets[i + 1])])


@dataclass(frozen=True)
class FolderSplit:
    """The samples of one split: file paths and their class indices."""

    paths: PathTable
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> "FolderSplit":
        return FolderSplit(PathTable([self.paths[i] for i in indices]), self.labels[indices])


@dataclass(frozen=True)
class FolderSplits:
    """What a folder dataset hands to `build_loaders`: train and val samples, the classes, its transforms."""

    train: FolderSplit
    val: FolderSplit
    classes: tuple[str, ...]
    default_transforms: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class FolderLayout:
    """How a dataset's own distribution lays out its folders (used to find them and to word errors)."""

    title: str
    train: str
    val: str
    suffix: str  # the files its distribution holds, for messages: "JPEG", "png"
    default_transforms: str
    subfolders: tuple[str, ...] = ()  # names under dataset_dir that may hold the splits

    @property
    def expected(self) -> str:
        return f"{self.train}/<class>/*.{self.suffix} and {self.val}/<class>/*.{self.suffix}"

    def root(self, dataset_dir: str | None) -> Path:
        """dataset_dir itself when it holds the train folder, else the first listed sub-folder that does."""
        if not dataset_dir:
            raise DataError(f"{self.title} needs dataset_dir: the folder holding {self.expected}")
        base = named_folder(dataset_dir, self.title, f"expected a folder holding {self.expected}")
        for candidate in (base, *(base / sub for sub in self.subfolders)):
            if (candidate / self.train).is_dir():
                return candidate
        raise DataError(f"{self.title} not found in {base}: expected {self.expected} there"
                        + (f" or in one of its sub-folders {', '.join(self.subfolders)}" if self.subfolders else ""))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _unlistable(exc: OSError, layout: FolderLayout) -> DataError:
    return DataError(f"{layout.title}: cannot read folder {shown(exc.filename or '?')}: {exc.strerror or exc}")


def find_classes(split_dir: Path, layout: FolderLayout) -> list[str]:
    """Sorted class folder names; DataError naming the folder and the expected layout when there are none."""
    if not split_dir.is_dir():
        raise DataError(f"{layout.title}: missing folder {split_dir} (expected {layout.expected})")
    try:
        entries = list(os.scandir(split_dir))
    except OSError as exc:
        raise _unlistable(exc, layout) from None
    classes = sorted(entry.name for entry in entries if entry.is_dir())
    if not classes:
        loose = sum(1 for entry in entries if entry.is_file() and _is_image(entry.name))
        found = f"{loose} image files but no class folders" if loose else "no class folders"
        raise DataError(f"{layout.title}: {split_dir} holds {found}; expected {layout.expected}")
    return classes


def _folder_key(path: str, layout: FolderLayout) -> tuple[int, int]:
    """What identifies a folder however it is reached (through links or not): its device and inode."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _unlistable(exc, layout) from None
    return info.st_dev, info.st_ino


def _walked_through(root: str, key: tuple[int, int], keys: dict[str, tuple[int, int]]) -> str | None:
    """The folder on the way down to `root` that is the same folder as `root`, if any."""
    parent = os.path.dirname(root)
    while parent in keys:
        if keys[parent] == key:
            return parent
        parent = os.path.dirname(parent)
    return None


def _image_files(class_dir: Path, layout: FolderLayout) -> list[str]:
    """The image files under class_dir, recursively, in torchvision's order (folders sorted by path, then names).

    Links to folders are followed, as ImageFolder does, but one that leads back to a folder above it
    is refused: os.walk would go round it until the path grows too long, taking in the images once
    per turn (and, with two such links, for longer than any run). A folder that cannot be listed
    stops the scan as well, where os.walk would skip it and its images without a word.
    """
    above: dict[tuple[int, int], str] = {}  # class_dir and every folder above it, by their real paths
    real = os.path.realpath(class_dir)
    while True:
        above[_folder_key(real, layout)] = real
        if os.path.dirname(real) == real:
            break
        real = os.path.dirname(real)

    def unlistable(exc: OSError) -> None:
        raise _unlistable(exc, layout)

    keys: dict[str, tuple[int, int]] = {}  # the folders walked, by the path os.walk reached them at
    walked: list[tuple[str, list[str]]] = []
    for root, _, files in os.walk(class_dir, followlinks=True, onerror=unlistable):
        key = keys[root] = _folder_key(root, layout)
        if walked:  # below class_dir: it must be none of the folders above it, nor one walked through to reach it
            seen = _walked_through(root, key, keys) or above.get(key)
            if seen is not None:
                raise DataError(f"{layout.title}: {shown(root)} is a link back to {shown(seen)}, a loop; remove the link")
        walked.append((root, files))
    return [os.path.join(root, name) for root, files in sorted(walked) for name in sorted(files) if _is_image(name)]


def scan_split(split_dir: Path, classes: list[str], layout: FolderLayout) -> FolderSplit:
    """Every image file under split_dir/<class>/ (recursively, sorted), labelled by the class's index."""
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        before = len(paths)
        paths += _image_files(split_dir / name, layout)
        labels += [label] * (len(paths) - before)
        if len(paths) == before:
            raise DataError(f"{layout.title}: class folder {shown(split_dir / name)} holds no image files "
                            f"({', '.join(IMG_EXTENSIONS)}); expected {layout.expected}")
    return FolderSplit(PathTable(paths), torch.tensor(labels, dtype=torch.int64))


def check_classes(train: list[str], val: list[str], root: Path, layout: FolderLayout, num_classes: int | None) -> None:
    """The val classes must be the train classes, and their count the config's num_classes when it is set."""
    if val != train:
        missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        detail = shown("; ".join(part for part in (f"missing in {layout.val}/: {', '.join(missing[:5])}" if missing else "",
                                                    f"not in {layout.train}/: {', '.join(extra[:5])}" if extra else "")
                                 if part))
        raise DataError(f"{layout.title} in {root}: {layout.val}/ has {len(val)} class folders and {layout.train}/ has "
                        f"{len(train)}; they must be the same classes ({detail})")
    if num_classes is not None and num_classes != len(train):
        raise DataError(f"{layout.title} in {root} has {len(train)} class folders in {layout.train}/, but the config "
                        f"sets num_classes {num_classes}; fix num_classes or the folders")


def folder_shape(num_classes: int, layout: FolderLayout) -> Callable[[DataOptions], DataShape]:
    """The DataShape of a folder dataset with a fixed class count: RGB at the recipe's crop size."""

    def shape(opts: DataOptions) -> DataShape:
        size = opts.image_size or recipe_named(opts.data_transforms or layout.default_transforms).size
        return DataShape(num_classes, FOLDER_CHANNELS, size)

    return shape


def load_folders(opts: DataOptions, layout: FolderLayout) -> tuple[Path, list[str], FolderSplit, FolderSplit]:
    """Find, scan and check both splits: (root, classes, train, val)."""
    root = layout.root(opts.dataset_dir)
    train_classes = find_classes(root / layout.train, layout)
    val_classes = find_classes(root / layout.val, layout)
    check_classes(train_classes, val_classes, root, layout, opts.num_classes)
    train = scan_split(root / layout.train, train_classes, layout)
    val = scan_split(root / layout.val, val_classes, layout)
    return root, train_classes, train, val
