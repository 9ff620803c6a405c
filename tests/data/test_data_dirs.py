"""A dataset_dir the user named is used or refused in one line; the system copy only serves an unset one."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_data import fake_fashion_mnist
from test_data_cifar import fake_cifar10
from test_data_folders import fake_imagenet

from adabits.data import DataError, build_loaders, fashion_mnist
from adabits.engine import TrainConfig


@pytest.fixture
def system_copy(tmp_path, monkeypatch) -> Path:
    """A complete Fashion-MNIST as the system package, so that falling back to it would succeed."""
    system = tmp_path / "system"
    fake_fashion_mnist(system, n_train=20)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", system)
    return system


def _one_line_error(**options) -> str:
    with pytest.raises(DataError) as info:
        build_loaders(TrainConfig(batch_size=4, **options))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unset_dataset_dir_reads_the_system_package(system_copy):
    assert build_loaders(TrainConfig(batch_size=4)).train.num_samples == 20


@pytest.mark.parametrize("missing", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_fashion_mnist_dir_lacking_one_file_is_refused_naming_it(tmp_path, system_copy, missing):
    fake_fashion_mnist(tmp_path / "fm")
    (tmp_path / "fm" / f"{missing}.gz").unlink()
    message = _one_line_error(dataset_dir=str(tmp_path / "fm"))
    assert f"{tmp_path / 'fm'} lacks {missing} " in message and "download=true" in message


def test_fashion_mnist_layout_subfolder_names_what_it_lacks(tmp_path, system_copy):
    fake_fashion_mnist(tmp_path / "tv" / "FashionMNIST" / "raw")
    (tmp_path / "tv" / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    message = _one_line_error(dataset_dir=str(tmp_path / "tv"))
    assert "FashionMNIST/raw lacks train-labels-idx1-ubyte " in message


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10", "cifar100", "imagenet1k", "cinic10"])
def test_missing_empty_or_file_dataset_dir_is_refused(tmp_path, system_copy, dataset):
    assert "does not exist" in _one_line_error(dataset=dataset, dataset_dir=str(tmp_path / "nowhere"))
    (tmp_path / "a_file").write_text("not a folder")
    assert "is a file, not a folder" in _one_line_error(dataset=dataset, dataset_dir=str(tmp_path / "a_file"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        build_loaders(TrainConfig(batch_size=4, dataset=dataset, dataset_dir=str(tmp_path / "empty")))


def test_download_into_a_file_is_refused_before_any_request(tmp_path, system_copy, monkeypatch):
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download"))
    (tmp_path / "a_file").write_text("x")
    assert "is a file" in _one_line_error(dataset_dir=str(tmp_path / "a_file"), download=True)
    assert "is a file" in _one_line_error(dataset="cifar10", dataset_dir=str(tmp_path / "a_file"), download=True)


def test_cifar_folder_lacking_a_batch_names_it(tmp_path):
    folder, _ = fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").unlink()
    message = _one_line_error(dataset="cifar10", dataset_dir=str(tmp_path))
    assert f"{folder} lacks data_batch_3, test_batch" in message


def test_cifar_dir_holding_some_files_itself_is_that_folder(tmp_path):
    folder, _ = fake_cifar10(tmp_path)
    (folder / "data_batch_1").unlink()
    message = _one_line_error(dataset="cifar10", dataset_dir=str(folder))
    assert f"{folder} lacks data_batch_1 " in message


def test_synthetic_refuses_a_dataset_dir(tmp_path):
    fake_imagenet(tmp_path / "inet")
    assert "remove dataset_dir" in _one_line_error(dataset="synthetic", dataset_dir=str(tmp_path / "inet"))


@pytest.mark.parametrize("dataset, channels", [("fashion_mnist", 1), ("cifar10", 3), ("imagenet1k", 3)])
def test_in_chans_that_does_not_fit_the_data_is_refused(tmp_path, dataset, channels):
    fake_fashion_mnist(tmp_path / "fm")
    fake_cifar10(tmp_path / "c10")
    fake_imagenet(tmp_path / "inet")
    where = {"fashion_mnist": "fm", "cifar10": "c10", "imagenet1k": "inet"}[dataset]
    wrong = 4 - channels  # 3 for the grey set, 1 for the colour ones
    message = _one_line_error(dataset=dataset, dataset_dir=str(tmp_path / where), in_chans=wrong, image_size=24
                              if dataset == "imagenet1k" else None)
    assert f"has {channels}-channel images, but the config sets in_chans {wrong}" in message
