"""Every file reader on damaged bytes: a checkpoint and a packed model that are cut, padded, flipped anywhere or
replaced by random bytes are one CheckpointError / PackedFormatError naming the file, never another exception
and never a model that loads silently changed. (The runtime's readers: tests/runtime/test_runtime_inputs.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _damage import damaged as damage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_export_packed import build

import adabits
from adabits.engine import checkpoint
from adabits.errors import CheckpointError, PackedFormatError
from adabits.export import load_packed, save_packed
from adabits.weights import read_checkpoint

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    model, kwargs = build("modified", bits_list=(8, 4))
    checkpoint.save_atomic({"model": model.state_dict(), "epoch": 3}, folder / "ckpt.pt")
    save_packed(model, folder / "model.safetensors", model_name="resnet_cifar", model_kwargs=kwargs)
    return {"checkpoint": folder / "ckpt.pt", "packed": folder / "model.safetensors"}


@given(data=st.data())
@FUZZ
def test_a_damaged_checkpoint_is_one_error_or_loads_the_same(files, tmp_path, data):
    """Read and loaded into its model as `pretrained_file` is: a byte that renames a key in both the state and its
    checksums (the pickle stores a string once) reads back consistent, and the strict load then refuses it."""
    damaged = damage(files["checkpoint"].read_bytes(), data)
    path = tmp_path / "damaged.pt"
    path.write_bytes(damaged)
    model, _ = build("modified", bits_list=(8, 4))
    try:
        adabits.load_weights(model, path)
    except CheckpointError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        return
    expected = read_checkpoint(files["checkpoint"])["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


@given(data=st.data())
@FUZZ
def test_a_damaged_packed_file_is_one_error_or_loads_the_same(files, tmp_path, data):
    damaged = damage(files["packed"].read_bytes(), data)
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damaged)
    try:
        model = load_packed(path)
    except PackedFormatError as error:
        assert "\n" not in str(error) and str(path) in str(error)
        return
    expected = load_packed(files["packed"])
    for (name, got), (_, want) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(got, want), name
