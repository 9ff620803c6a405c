"""Every dataset reader on damaged files and folders: Fashion-MNIST's IDX files (gzipped or not), the CIFAR pickles
(as Python 3 and as the official Python 2 files write them), and the class folders of ImageNet and CINIC-10.

Files are cut, padded, flipped, emptied or replaced by random bytes (tests/_damage.py); folders get emptied classes,
extra classes, non-image files, files with an image's name that are not images (junk, FIFOs, dangling links,
folders), odd file names and links in loops. Each case either loads a well-formed dataset (the images and labels
the files hold, as many as the undamaged files hold, labels in range) or is one DataError whose one-line message
names the file or folder; through the command it is exit status 2 with one line on stderr. Never a traceback, a
hang, or fewer (or more) images without a word. Hypothesis draws the cases, seeded; HYPOTHESIS_PROFILE=long draws
ten times as many. The explicit tests below them are the failures these found, kept."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import signal
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _damage import damaged as damage
from _engine_helpers import tiny_args
from _preempt_helpers import no_plots
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data import fake_fashion_mnist
from test_data_cifar import fake_cifar10, fake_cifar100
from test_data_folders import fake_cinic, fake_imagenet, write_image

from adabits.cli import main
from adabits.data import DataError, build_loaders, build_splits
from adabits.data.folder import IMG_EXTENSIONS
from adabits.engine import TrainConfig

EXAMPLES = {"default": 100, "long": 1000}[os.environ.get("HYPOTHESIS_PROFILE", "default")]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: the sizes of the undamaged copies: a load that succeeds must give exactly these
FM_COUNTS = (12, 6)
CIFAR_COUNTS = {"cifar10": (15, 3), "cifar100": (7, 4)}
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", ("data_batch_1", "data_batch_3", "data_batch_5", "test_batch")),
               "cifar100": ("cifar-100-python", ("train", "test"))}
FOLDERS = {"imagenet1k": ("train", "val"), "cinic10": ("train", "valid")}
IMAGE_CHECK_S = 30  # a hang (a FIFO read, a walk round a link loop) fails the test instead of stopping the suite


class Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2's `str` (SHORT_BINSTRING / BINSTRING), as the official CIFAR files hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        size = bytes([len(raw)]) if len(raw) < 256 else struct.pack("<i", len(raw))
        self.write((pickle.SHORT_BINSTRING if len(raw) < 256 else pickle.BINSTRING) + size + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """`obj` as Python 2's cPickle and numpy 1 wrote the official files (protocol 2, numpy.core's reconstructor)."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One undamaged copy of each dataset, in every on-disk form its reader takes; each case copies one."""
    base = tmp_path_factory.mktemp("pristine")
    fake_fashion_mnist(base / "fm_gz")
    (base / "fm_raw").mkdir()
    for gz in (base / "fm_gz").iterdir():
        (base / "fm_raw" / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    fake_cifar10(base / "cifar10")
    fake_cifar100(base / "cifar100")
    for release in ("cifar10", "cifar100"):
        shutil.copytree(base / release, base / f"{release}_py2")
        folder = base / f"{release}_py2" / CIFAR_FILES[release][0]
        for path in folder.iterdir():
            with open(path, "rb") as f:
                path.write_bytes(py2_pickle(pickle.load(f, encoding="bytes")))
    fake_imagenet(base / "imagenet1k", n_train=2, n_val=1)
    fake_cinic(base / "cinic10", n=2)
    return {p.name: p for p in base.iterdir()}


def copy_of(pristine: dict[str, Path], name: str, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("case") / name
    shutil.copytree(pristine[name], target, symlinks=True)
    return target


def one_line_naming(error: DataError, *names: Path | str) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    assert any(str(name) in message for name in names), (names, message)
    return message


class Hung(Exception):
    """A case ran past IMAGE_CHECK_S: not an OSError (os.walk would swallow it), nor KeyboardInterrupt (pytest would
    stop the session)."""


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """SIGALRM ends a case that hangs, failing it."""
    def hung(signum: int, frame: object) -> None:
        raise Hung(f"hung for {IMAGE_CHECK_S} s")

    previous = signal.signal(signal.SIGALRM, hung)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def bounded(fn: Callable[[], object]) -> object:
    signal.alarm(IMAGE_CHECK_S)
    try:
        return fn()
    finally:
        signal.alarm(0)


# ---- Fashion-MNIST: IDX files, gzipped or not ------------------------------------------------------------------


def fm_config(folder: Path) -> TrainConfig:
    return TrainConfig(dataset="fashion_mnist", dataset_dir=str(folder), batch_size=4)


def assert_fashion_mnist_well_formed(folder: Path) -> None:
    splits = build_splits(fm_config(folder))
    for images, labels, count in ((splits.train_images, splits.train_labels, FM_COUNTS[0]),
                                  (splits.val_images, splits.val_labels, FM_COUNTS[1])):
        assert images.dtype == torch.uint8 and tuple(images.shape) == (count, 1, 28, 28)
        assert labels.dtype == torch.int64 and tuple(labels.shape) == (count,)
        assert 0 <= int(labels.min()) and int(labels.max()) < 10


@given(data=st.data())
@FUZZ
def test_a_damaged_idx_file_is_one_error_or_a_well_formed_dataset(pristine, tmp_path_factory, data):
    """The damage hits the file as stored (a .gz's compressed bytes), or the IDX bytes inside a .gz."""
    layout = data.draw(st.sampled_from(["fm_gz", "fm_raw"]), "layout")
    folder = copy_of(pristine, layout, tmp_path_factory)
    path = data.draw(st.sampled_from(sorted(folder.iterdir())), "file")
    inside = layout == "fm_gz" and data.draw(st.booleans(), "damage the IDX inside the gzip")
    if inside:
        path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes()), data)))
    else:
        path.write_bytes(damage(path.read_bytes(), data))
    try:
        assert_fashion_mnist_well_formed(folder)
    except DataError as error:
        one_line_naming(error, path)


def reserved_block_type(gz: bytes) -> bytes:
    """A .gz whose first deflate block has the reserved type 11: zlib refuses it ("invalid block type")."""
    start = gz.index(b"\0", 10) + 1 if gz[3] & 0x08 else 10  # after the stored file name, when there is one
    return gz[:start] + bytes([gz[start] | 0x06]) + gz[start + 1:]


def idx_bytes(dims: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


@pytest.mark.parametrize("name, content, expected", [
    # found: a flipped byte in the deflate stream escaped as zlib.error, with its traceback
    ("train-images-idx3-ubyte.gz", lambda raw: reserved_block_type(raw), "cannot read .*error: .*invalid block type"),
    ("train-labels-idx1-ubyte.gz", lambda raw: raw[:-8] + bytes([raw[-8] ^ 1]) + raw[-7:], "BadGzipFile: CRC check"),
    # found: labels outside 0..9 loaded, and would have crashed the loss mid-run
    ("train-labels-idx1-ubyte", lambda raw: idx_bytes((12,), bytes([3] * 11 + [10])), "holds label 10; .* 0..9"),
    ("t10k-labels-idx1-ubyte", lambda raw: idx_bytes((6,), bytes([255] * 6)), "holds label 255"),
    # found: images of another size loaded (a model of the registered 28x28 shape would not fit them)
    ("train-images-idx3-ubyte", lambda raw: idx_bytes((12, 14, 56), bytes(12 * 28 * 28)), r"shape \(12, 14, 56\)"),
    ("train-images-idx3-ubyte", lambda raw: idx_bytes((), b"\x07"), r"shape \(\)"),
    # found: a split of no images loaded (and reported no error, or a misleading one later)
    ("t10k-images-idx3-ubyte", lambda raw: idx_bytes((0, 28, 28), b""), "holds no images"),
    # label and image counts that differ; a file cut inside its header; another IDX type (signed bytes)
    ("t10k-labels-idx1-ubyte", lambda raw: idx_bytes((5,), bytes(5)), "holds 6 images but .* holds 5 labels"),
    ("train-images-idx3-ubyte", lambda raw: raw[:10], "truncated: its header declares 3 dimensions"),
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x09" + raw[3:], "not an IDX file of unsigned bytes"),
    ("train-images-idx3-ubyte", lambda raw: raw + b"\x00", "more than the 9408 bytes"),
    ("train-images-idx3-ubyte", lambda raw: b"", "not an IDX file .*starts with nothing"),
])
def test_idx_cases_found(pristine, tmp_path_factory, name, content, expected):
    folder = copy_of(pristine, "fm_gz" if name.endswith(".gz") else "fm_raw", tmp_path_factory)
    path = folder / name
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(DataError, match=expected) as info:
        build_splits(fm_config(folder))
    one_line_naming(info.value, path)


def test_an_inflating_gzip_is_refused_without_reading_it_whole(pristine, tmp_path_factory):
    """Oversized: 12 images declared, 256 MB of zeros after them (a 250 kB .gz); read up to the declared size + 1."""
    folder = copy_of(pristine, "fm_gz", tmp_path_factory)
    path = folder / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_bytes((12, 28, 28), bytes(12 * 28 * 28)))
        for _ in range(256):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more than the 9408 bytes"):
            build_splits(fm_config(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
    path.write_bytes(gzip.compress(idx_bytes((0xFFFFFFFF, 28, 28), bytes(100))))  # a header claiming 3 TB
    with pytest.raises(DataError, match="truncated: .*the file holds 100"):
        build_splits(fm_config(folder))


def test_the_fashion_mnist_system_message_is_one_line(tmp_path, monkeypatch):
    from adabits.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DataError) as info:
        build_splits(TrainConfig(dataset="fashion_mnist"))
    assert "\n" not in str(info.value) and "apt-get install dataset-fashion-mnist" in str(info.value)


# ---- CIFAR-10 / CIFAR-100: pickled batches -----------------------------------------------------------------------


def cifar_config(release: str, folder: Path) -> TrainConfig:
    return TrainConfig(dataset=release, dataset_dir=str(folder), batch_size=4)


def assert_cifar_well_formed(release: str, folder: Path) -> None:
    splits = build_splits(cifar_config(release, folder))
    classes = {"cifar10": 10, "cifar100": 100}[release]
    for images, labels, count in ((splits.train_images, splits.train_labels, CIFAR_COUNTS[release][0]),
                                  (splits.val_images, splits.val_labels, CIFAR_COUNTS[release][1])):
        assert images.dtype == torch.uint8 and tuple(images.shape) == (count, 3, 32, 32)
        assert labels.dtype == torch.int64 and tuple(labels.shape) == (count,)
        assert 0 <= int(labels.min()) and int(labels.max()) < classes


@given(data=st.data())
@FUZZ
def test_a_damaged_cifar_batch_is_one_error_or_a_well_formed_dataset(pristine, tmp_path_factory, data):
    release = data.draw(st.sampled_from(["cifar10", "cifar100"]), "release")
    style = data.draw(st.sampled_from(["", "_py2"]), "written by Python 3 or as the official Python 2 files")
    root = copy_of(pristine, release + style, tmp_path_factory)
    sub, names = CIFAR_FILES[release]
    path = root / sub / data.draw(st.sampled_from(names), "file")
    path.write_bytes(damage(path.read_bytes(), data))
    try:
        assert_cifar_well_formed(release, root)
    except DataError as error:
        one_line_naming(error, path)


def test_the_official_python2_pickles_load(pristine):
    for release in ("cifar10", "cifar100"):
        assert_cifar_well_formed(release, pristine[f"{release}_py2"])
        python3 = build_splits(cifar_config(release, pristine[release]))
        python2 = build_splits(cifar_config(release, pristine[f"{release}_py2"]))
        assert torch.equal(python3.train_images, python2.train_images)
        assert torch.equal(python3.val_labels, python2.val_labels)


class Opens:
    """Unpickling this calls builtins.open: what a crafted file could do with a plain pickle.load."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def batch(data: object, labels: object, key: bytes = b"labels") -> bytes:
    return pickle.dumps({b"batch_label": b"x", b"data": data, key: labels}, protocol=2)


PIXELS = np.zeros((2, 3072), dtype=np.uint8)


@pytest.mark.parametrize("content, expected", [
    # found: the file was read with pickle.load, which imports and calls what it names (here: open a file for writing)
    (lambda marker: pickle.dumps({b"data": Opens(marker)}, protocol=2), "refers to (io|builtins).open"),
    (lambda marker: pickle.dumps(Opens(marker), protocol=4), "refers to (io|builtins).open"),
    # found: damaged pickles escaped as AttributeError, ModuleNotFoundError, LookupError, OverflowError
    (lambda marker: b"\x80\x02cnumpy\nno_such_name\nq\x00.", "refers to numpy.no_such_name"),
    (lambda marker: b"\x80\x02cno_such_module\nx\nq\x00.", "refers to no_such_module.x"),
    (lambda marker: b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x03\x00\x00\x00nah\x86R.", "LookupError"),
    (lambda marker: b"\x80\x04\x8e" + (2 ** 63 + 5).to_bytes(8, "little"), "cannot read"),
    # found: pickle's own message for a persistent id spans two lines, and so did the error
    (lambda marker: b"\x80\x02P0\n.", "persistent id instruction was encountered, but no persistent_load"),
    # found: pixels of another type were cast to bytes without a word (300 -> 44, 0.7 -> 0)
    (lambda marker: batch(np.full((2, 3072), 300, dtype=np.int64), [1, 2]), "b'data' is an array of int64"),
    (lambda marker: batch(np.full((2, 3072), 0.7), [1, 2]), "b'data' is an array of float64"),
    (lambda marker: batch(PIXELS.reshape(3072, 2), [1, 2]), r"shape \(3072, 2\)"),
    (lambda marker: batch(PIXELS.tolist(), [1, 2]), "b'data' is a list"),
    # found: labels that are not integers were truncated to other classes (1.5 -> 1, True -> 1)
    (lambda marker: batch(PIXELS, [1.5, 2.0]), "b'labels' is not a list of integers"),
    (lambda marker: batch(PIXELS, [True, 2]), "b'labels' is not a list of integers"),
    (lambda marker: batch(PIXELS, np.array([0.0, 1.0])), "b'labels' is not a list of integers"),
    # found: a batch of no images loaded (a training set silently smaller, or empty)
    (lambda marker: batch(np.zeros((0, 3072), dtype=np.uint8), []), "holds no images"),
    # not a batch, or the wrong one (CIFAR-100's keys in a CIFAR-10 file), counts, range
    (lambda marker: pickle.dumps([1, 2, 3]), "it holds a list, not a dict"),
    (lambda marker: batch(PIXELS, [1, 2], key=b"fine_labels"), "lacks b'labels'"),
    (lambda marker: batch(PIXELS, [1, 2, 3]), "2 images for 3 labels"),
    (lambda marker: batch(PIXELS, [1, -1]), r"labels outside 0..9 \(from -1 to 1\)"),
    (lambda marker: batch(PIXELS, np.array([1, 10], dtype=np.uint64)), r"outside 0..9 \(from 1 to 10\)"),
])
def test_cifar_cases_found(pristine, tmp_path_factory, content, expected):
    root = copy_of(pristine, "cifar10", tmp_path_factory)
    marker = root.parent / "written by the pickle"
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(content(marker))
    with pytest.raises(DataError, match=expected) as info:
        build_splits(cifar_config("cifar10", root))
    one_line_naming(info.value, path)
    assert not marker.exists()


def test_a_batch_repickled_by_numpy_2_with_protocol_5_loads(pristine, tmp_path_factory):
    root = copy_of(pristine, "cifar10", tmp_path_factory)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    content[b"labels"] = np.array(content[b"labels"], dtype=np.int64)
    path.write_bytes(pickle.dumps(content, protocol=5))
    assert_cifar_well_formed("cifar10", root)


def test_missing_cifar_is_one_line(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError) as info:
        build_splits(cifar_config("cifar10", tmp_path))
    assert "\n" not in str(info.value) and "tar xzf" in str(info.value)


# ---- image folders: ImageNet, CINIC-10 ---------------------------------------------------------------------------


def folder_config(dataset: str, root: Path, **kw: object) -> TrainConfig:
    return TrainConfig(**{"dataset": dataset, "dataset_dir": str(root), "batch_size": 4, "image_size": 16, **kw})


def image_names(split_dir: Path) -> int:
    """The samples a folder should give: entries with an image's name that are not folders (called once the
    loader has found no loop)."""
    return sum(1 for _, _, files in os.walk(split_dir, followlinks=True) for name in files
               if name.lower().endswith(IMG_EXTENSIONS))


def load_every_image(dataset: str, root: Path) -> None:
    """Build the loaders and decode every image of both splits; the loaded dataset must be what the folders hold."""
    loaders = build_loaders(folder_config(dataset, root))
    for loader, split in zip((loaders.train, loaders.val), FOLDERS[dataset], strict=True):
        labels = torch.cat([y for x, y in loader])
        assert loader.num_samples == len(labels) == image_names(root / split)
        assert 0 <= int(labels.min()) and int(labels.max()) < loaders.num_classes


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


MUTATIONS = ("damage", "junk_image", "not_an_image", "empty_class", "extra_class", "loop", "fifo", "dangling",
             "odd_name", "folder_named_like_an_image", "empty_image", "link_to_a_class")


def mutate(root: Path, split: str, how: str, data: st.DataObject, tag: int = 0) -> None:
    """One change to one split of a class-folder dataset, drawn by Hypothesis; `tag` tells changes apart."""
    split_dir = root / split
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    cls = data.draw(st.sampled_from(classes), "class")
    ext = data.draw(st.sampled_from(IMG_EXTENSIONS), "extension")
    ext = ext.upper() if data.draw(st.booleans(), "upper case") else ext
    images = _files(cls)
    if how == "damage" and images:
        path = data.draw(st.sampled_from(images), "image")
        path.write_bytes(damage(path.read_bytes(), data))
    elif how == "junk_image":
        (cls / f"junk{tag}{ext}").write_bytes(data.draw(st.binary(max_size=256)))
    elif how == "not_an_image":
        name = data.draw(st.sampled_from(["readme.txt", "Thumbs.db", ".DS_Store", "x.JPEG.bak", "labels"]))
        (cls / name).write_bytes(data.draw(st.binary(max_size=256)))
    elif how == "empty_class":
        for path in images:
            path.unlink()
        if data.draw(st.booleans()):
            (cls / "notes.txt").write_text("no images here")
    elif how == "extra_class":
        for where in data.draw(st.sampled_from([[split_dir], [root / s for s in (split, *_other(root, split))]])):
            (where / "zz_new_class").mkdir(exist_ok=True)
    elif how == "loop":
        target = data.draw(st.sampled_from([".", "..", "../..", "/", str(cls)]), "link target")
        os.symlink(target, cls / f"loop{tag}")
    elif how == "fifo":
        os.mkfifo(cls / f"pipe{tag}{ext}")
    elif how == "dangling":
        os.symlink(cls / "nowhere", cls / f"gone{tag}{ext}")
    elif how == "odd_name" and images:
        name = data.draw(st.sampled_from([b"\xff\xfe", "line\nbreak".encode(), "tab\there".encode(), " ".encode(),
                                          "\u00e9t\u00e9".encode(), b"-x", b"a" * 200]))
        shutil.copy(images[0], os.fsdecode(os.fsencode(cls) + b"/" + name + str(tag).encode() + ext.encode()))
    elif how == "folder_named_like_an_image":
        (cls / f"dir{tag}{ext}").mkdir()
    elif how == "empty_image":
        (cls / f"empty{tag}{ext}").write_bytes(b"")
    elif how == "link_to_a_class":
        os.symlink(cls, split_dir / f"zz_linked{tag}", target_is_directory=True)


def _other(root: Path, split: str) -> list[str]:
    return [p.name for p in root.iterdir() if p.is_dir() and p.name != split]


@given(data=st.data())
@FUZZ
def test_a_damaged_class_folder_is_one_error_or_the_images_it_holds(pristine, tmp_path_factory, data):
    dataset = data.draw(st.sampled_from(sorted(FOLDERS)), "dataset")
    root = copy_of(pristine, dataset, tmp_path_factory)
    for tag in range(data.draw(st.integers(1, 2), "changes")):
        split = data.draw(st.sampled_from(FOLDERS[dataset]), "split")
        mutate(root, split, data.draw(st.sampled_from(MUTATIONS), "change"), data, tag)
    try:
        bounded(lambda: load_every_image(dataset, root))
    except DataError as error:
        one_line_naming(error, root)


def make_imagenet(tmp_path: Path) -> tuple[Path, Path]:
    root = fake_imagenet(tmp_path / "inet", n_train=2, n_val=1)
    return root, root / "train" / "n01440764"


@pytest.mark.parametrize("target", ["..", "../..", ".", "/", "{root}"])
def test_a_link_back_to_a_folder_above_is_a_loop(tmp_path, target):
    """Found: os.walk went round the link until the path was too long, so 6 training images loaded as 246 (or,
    with a second such link, the scan ran for hours); a link to / would have walked the whole disk."""
    root, cls = make_imagenet(tmp_path)
    os.symlink(target.format(root=root), cls / "up")
    with pytest.raises(DataError, match="is a link back to .*, a loop; remove the link") as info:
        bounded(lambda: build_loaders(folder_config("imagenet1k", root)))
    one_line_naming(info.value, cls / "up")


def test_two_loops_are_refused_at_once(tmp_path):
    root, cls = make_imagenet(tmp_path)
    os.symlink("..", cls / "up")
    os.symlink(".", cls / "self")
    with pytest.raises(DataError, match="a loop"):
        bounded(lambda: build_loaders(folder_config("imagenet1k", root)))


def test_a_folder_that_cannot_be_listed_stops_the_scan(tmp_path, monkeypatch):
    """Found: os.walk skips a folder it cannot list (permissions, a vanished mount), and its images with it, without
    a word. (The tests run as root, which reads every folder, so the refusal is simulated.)"""
    root, cls = make_imagenet(tmp_path)
    (cls / "sub").mkdir()
    write_image(cls / "sub" / "more.JPEG", 20, 20, 0, "JPEG")
    real = os.scandir

    def scandir(path: str = ".") -> object:
        if os.fspath(path) == str(cls / "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match="cannot read folder .*sub: Permission denied") as info:
        build_loaders(folder_config("imagenet1k", root))
    one_line_naming(info.value, cls / "sub")


def test_links_that_are_no_loop_are_followed(tmp_path):
    """As ImageFolder: a linked folder of more images counts, and so does a folder reached twice without a loop."""
    root, cls = make_imagenet(tmp_path)
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    write_image(extra / "more.JPEG", 20, 20, 0, "JPEG")
    os.symlink(extra, cls / "a")
    os.symlink(extra, cls / "b")
    assert build_loaders(folder_config("imagenet1k", root)).train.num_samples == 6 + 2


@pytest.mark.parametrize("make, expected", [
    # found: reading a FIFO with an image's name blocked forever
    (lambda cls: os.mkfifo(cls / "pipe.JPEG"), "pipe.JPEG: OSError: it is a FIFO, not a regular file"),
    (lambda cls: os.symlink("/dev/zero", cls / "zero.JPEG"), "zero.JPEG: OSError: it is a device"),
    (lambda cls: os.symlink("nowhere", cls / "gone.JPEG"), "gone.JPEG: FileNotFoundError"),
    (lambda cls: (cls / "empty.png").write_bytes(b""), "empty.png: UnidentifiedImageError"),
    # found: a line break in a file name broke the one-line message
    (lambda cls: (cls / "two\nlines.JPEG").write_bytes(b"junk"), r"two\\nlines.JPEG: UnidentifiedImageError"),
])
def test_a_file_with_an_images_name_that_is_no_image_stops_the_run(tmp_path, make, expected):
    root, cls = make_imagenet(tmp_path)
    make(cls)
    loaders = build_loaders(folder_config("imagenet1k", root))
    with pytest.raises(DataError, match=expected) as info:
        bounded(lambda: list(loaders.train))
    one_line_naming(info.value, cls)


def test_a_file_name_that_is_not_utf8_loads(tmp_path):
    """Found: a name of bytes that are not UTF-8 (os.walk gives it surrogate escapes) was a UnicodeEncodeError."""
    root, cls = make_imagenet(tmp_path)
    odd = os.fsdecode(os.fsencode(cls) + b"/\xff\xfe.JPEG")
    shutil.copy(cls / "n01440764_0.JPEG", odd)
    loaders = build_loaders(folder_config("imagenet1k", root))
    assert loaders.train.num_samples == 7 and odd in [loaders.train.dataset.split.paths[i] for i in range(7)]
    assert len(torch.cat([y for _, y in loaders.train])) == 7
    with open(odd, "wb") as f:
        f.write(b"junk")
    with pytest.raises(DataError, match=r"\\udcff\\udcfe.JPEG: UnidentifiedImageError") as info:
        list(build_loaders(folder_config("imagenet1k", root)).train)
    one_line_naming(info.value, cls)


# ---- the command: exit status 2 and one line on stderr -------------------------------------------------------------


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


COMMAND_CASES = {
    "fashion_mnist": ("fm_gz", "train-images-idx3-ubyte.gz", dict(in_chans=1, image_size=28, num_classes=10)),
    "cifar10": ("cifar10_py2", "cifar-10-batches-py/data_batch_4", dict(in_chans=3, image_size=32, num_classes=10)),
    "cifar100": ("cifar100", "cifar-100-python/test", dict(in_chans=3, image_size=32, num_classes=100)),
    "imagenet1k": ("imagenet1k", "train/n01443537/n01443537_1.JPEG", dict(in_chans=3, image_size=16, num_classes=3)),
    "cinic10": ("cinic10", "valid/automobile/cifar10-valid-0.png", dict(in_chans=3, image_size=16, num_classes=2)),
}


def train(root: Path, dataset: str, capsys, **shape: object) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", *tiny_args(root.parent / "runs", dataset=dataset, dataset_dir=str(root), batch_size=8,
                                     num_epochs=1, max_iters_per_epoch=1, **shape)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("dataset", sorted(COMMAND_CASES))
def test_the_command_refuses_a_damaged_dataset_in_one_line(pristine, tmp_path_factory, capsys, monkeypatch, dataset):
    """A file cut in half, through `adabits train`: one line naming it, exit status 2 (for a folder dataset, at the
    batch that holds the image: the tiny sets fit in one batch)."""
    no_plots(monkeypatch)
    name, file, shape = COMMAND_CASES[dataset]
    root = copy_of(pristine, name, tmp_path_factory)
    cut(root / file)
    code, err = train(root, dataset, capsys, **shape)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and str(root / file) in err, (code, err)


@given(data=st.data())
@settings(FUZZ, max_examples=max(5, EXAMPLES // 4))
def test_the_command_runs_or_refuses_any_damage_in_one_line(pristine, tmp_path_factory, capsys, monkeypatch, data):
    no_plots(monkeypatch)
    dataset = data.draw(st.sampled_from(sorted(COMMAND_CASES)), "dataset")
    name, file, shape = COMMAND_CASES[dataset]
    root = copy_of(pristine, name, tmp_path_factory)
    if dataset in FOLDERS:
        mutate(root, data.draw(st.sampled_from(FOLDERS[dataset])), data.draw(st.sampled_from(MUTATIONS)), data)
    else:
        (root / file).write_bytes(damage((root / file).read_bytes(), data))
    code, err = bounded(lambda: train(root, dataset, capsys, **shape))
    assert code in (0, 2) and "Traceback" not in err, (code, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: ") and str(root) in err, err
