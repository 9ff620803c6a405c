"""Checksums: a checkpoint whose bytes changed on disk is refused, naming the tensor; old files still load."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

from adabits import integrity
from adabits.engine import checkpoint
from adabits.errors import CheckpointError
from adabits.weights import read_checkpoint


def tensor_data_offset(path: Path, entry_suffix: str) -> tuple[int, int]:
    """(offset, size) in the file of a zip entry's stored bytes (torch.save stores them uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(entry_suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def a_checkpoint() -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return {"format": checkpoint.FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}


def test_digest_covers_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.float32)
    assert integrity.tensor_digest(t) == integrity.tensor_digest(t.clone())
    assert integrity.tensor_digest(t) != integrity.tensor_digest(t.reshape(2, 3))
    assert integrity.tensor_digest(t) != integrity.tensor_digest(t.double())
    assert integrity.tensor_digest(torch.tensor(1.5, dtype=torch.bfloat16))  # 0-dim and numpy-less dtypes
    assert integrity.tensor_digest(torch.zeros(0))


def test_saved_checkpoint_reads_back_with_its_checksums(tmp_path):
    checkpoint.save_atomic(a_checkpoint(), tmp_path / "c.pt")
    ckpt = read_checkpoint(tmp_path / "c.pt")
    assert set(ckpt[integrity.CHECKSUM_KEY]) == {"model", "optimizer"}
    assert "state.0.momentum_buffer" in ckpt[integrity.CHECKSUM_KEY]["optimizer"]


@pytest.mark.parametrize("entry", ["data/0", "data/2"])
def test_flipped_byte_in_a_tensor_is_a_checksum_mismatch(tmp_path, entry):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic(a_checkpoint(), path)
    offset, size = tensor_data_offset(path, entry)
    flip_byte(path, offset + size // 2)
    assert torch.load(path, weights_only=True)  # torch itself reads the changed bytes without complaint
    with pytest.raises(CheckpointError, match=r"c\.pt is corrupt \(checksum mismatch in (model|optimizer) \S+\)"):
        read_checkpoint(path)


def test_flipped_optimizer_state_is_named(tmp_path):
    path = tmp_path / "c.pt"
    ckpt = a_checkpoint()
    checkpoint.save_atomic(ckpt, path)
    with zipfile.ZipFile(path) as archive:
        entries = sorted(i.filename for i in archive.infolist() if "/data/" in i.filename)
    # the momentum buffers are the last tensors pickled; change the last one's bytes
    last = max(entries, key=lambda name: int(name.rsplit("/", 1)[1]))
    offset, _ = tensor_data_offset(path, last.split("/", 1)[1])
    flip_byte(path, offset)
    with pytest.raises(CheckpointError, match=r"checksum mismatch in optimizer state\.\d\.momentum_buffer"):
        read_checkpoint(path)


def test_old_checkpoint_without_checksums_loads_unchecked(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(a_checkpoint(), path)
    offset, size = tensor_data_offset(path, "data/0")
    flip_byte(path, offset)
    assert integrity.CHECKSUM_KEY not in read_checkpoint(path)


def test_plain_state_dict_is_sealed_only_when_it_is_a_checkpoint(tmp_path):
    sd = {"w": torch.ones(2)}
    assert integrity.seal(sd) is sd
    checkpoint.save_atomic(sd, tmp_path / "sd.pt")
    assert set(read_checkpoint(tmp_path / "sd.pt")) == {"w"}


def test_malformed_checksums_are_corrupt(tmp_path):
    torch.save({**a_checkpoint(), integrity.CHECKSUM_KEY: {"model": "abc"}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="checksums are malformed"):
        read_checkpoint(tmp_path / "m.pt")
    sealed = integrity.seal(a_checkpoint())
    del sealed["model"]["0.bias"]
    torch.save(sealed, tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match=r"checksum mismatch in model 0\.bias"):
        read_checkpoint(tmp_path / "k.pt")
