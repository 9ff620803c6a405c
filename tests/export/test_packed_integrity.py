"""A packed file with changed bytes, metadata or layout gives PackedFormatError naming the problem, never a
KeyError, a late RuntimeError or a silently different model. Every case writes a real file and corrupts it."""
from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_export_packed import build

from adabits import integrity
from adabits.errors import PackedFormatError
from adabits.export import load_packed, save_packed

Meta = dict[str, str]
Tensors = dict[str, torch.Tensor]


@pytest.fixture
def packed(tmp_path) -> Path:
    model, kwargs = build("modified", bits_list=(8, 4))
    path = tmp_path / "model.safetensors"
    save_packed(model, path, model_name="resnet_cifar", model_kwargs=kwargs)
    return path


def header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return size, json.loads(raw[8: 8 + size])


def flip_tensor_byte(path: Path, key: str) -> None:
    size, head = header(path)
    start, end = head[key]["data_offsets"]
    raw = bytearray(path.read_bytes())
    raw[8 + size + (start + end) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def edit_metadata(path: Path, change: Callable[[Meta], None]) -> None:
    """Rewrite the header's metadata in place; the tensor bytes stay as written (checksums untouched)."""
    size, head = header(path)
    change(head["__metadata__"])
    text = json.dumps(head).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + path.read_bytes()[8 + size:])


def rewrite(path: Path, change: Callable[[Meta, Tensors], None]) -> None:
    """Rewrite the file with changed metadata/tensors and fresh checksums: a consistent file that is wrong."""
    tensors = safetensors.torch.load_file(str(path))
    meta = header(path)[1]["__metadata__"]
    change(meta, tensors)
    meta[integrity.CHECKSUM_KEY] = integrity.packed_checksums(tensors, meta)
    path.write_bytes(safetensors.torch.save(tensors, metadata=meta))


def layers_of(meta: Meta) -> dict:
    return json.loads(meta["layers"])


def set_layer(meta: Meta, name: str, **fields) -> None:
    layers = layers_of(meta)
    layers[name] = fields.pop("whole") if "whole" in fields else {**layers[name], **fields}
    meta["layers"] = json.dumps(layers)


def set_kwargs(meta: Meta, **fields) -> None:
    meta["model_kwargs"] = json.dumps({**json.loads(meta["model_kwargs"]), **fields})


def test_untouched_file_loads(packed):
    assert load_packed(packed) is not None


@pytest.mark.parametrize("key", ["conv1.weight_codes.8", "fc.sat_scale", "bn1.bn.0.weight"])
def test_flipped_tensor_byte_is_a_checksum_mismatch(packed, key):
    flip_tensor_byte(packed, key)
    with pytest.raises(PackedFormatError, match=rf"corrupt \(checksum mismatch in tensor {key}\)"):
        load_packed(packed)


@pytest.mark.parametrize("change", [
    lambda m: set_layer(m, "conv1", scheme="centered"),
    lambda m: (set_layer(m, next(iter(layers_of(m))), scheme="centered"), set_kwargs(m, weight_quant_scheme="centered")),
    lambda m: set_kwargs(m, num_classes=9),
    lambda m: m.update(calibrated_bits="[6]"),
], ids=["one layer's scheme", "scheme everywhere", "num_classes", "calibrated_bits"])
def test_edited_metadata_is_a_checksum_mismatch(packed, change):
    edit_metadata(packed, change)
    with pytest.raises(PackedFormatError, match=r"corrupt \(checksum mismatch in its metadata\)"):
        load_packed(packed)


@pytest.mark.parametrize("text", ["not json", "[]", json.dumps({"metadata": "x"})])
def test_malformed_checksum_field(packed, text):
    edit_metadata(packed, lambda m: m.update({integrity.CHECKSUM_KEY: text}))
    with pytest.raises(PackedFormatError, match="checksums are malformed"):
        load_packed(packed)


def test_file_without_checksums_loads_unchecked(packed):
    edit_metadata(packed, lambda m: m.pop(integrity.CHECKSUM_KEY))
    assert load_packed(packed) is not None


def _first_layer(meta: Meta) -> str:
    return next(iter(layers_of(meta)))


# (what a consistent but wrong file holds, the message fragment load_packed must give)
MALFORMED: list[tuple[str, Callable[[Meta, Tensors], None], str]] = [
    ("format", lambda m, t: m.update(format="adabits-packed-v0"), "not a packed adabits model"),
    ("no model_name", lambda m, t: m.pop("model_name"), "metadata is incomplete or malformed \\(KeyError"),
    ("no layers", lambda m, t: m.pop("layers"), "metadata is incomplete or malformed \\(KeyError"),
    ("no calibrated_bits", lambda m, t: m.pop("calibrated_bits"), "incomplete or malformed \\(KeyError"),
    ("bad json", lambda m, t: m.update(model_kwargs="{depth: 8"), "malformed \\(JSONDecodeError"),
    ("kwargs a list", lambda m, t: m.update(model_kwargs="[8]"), "model_kwargs is a list, not a dict"),
    ("layers a list", lambda m, t: m.update(layers="[]"), "layers is a list, not a dict"),
    ("calibrated a number", lambda m, t: m.update(calibrated_bits="6"), "calibrated_bits is a int, not a list"),
    ("unknown model", lambda m, t: m.update(model_name="resnet7"), "does not build a model \\(unknown model"),
    ("unknown option", lambda m, t: set_kwargs(m, colour=3), "does not build a model .*no option"),
    ("bad option type", lambda m, t: set_kwargs(m, depth="eight"), "does not build a model"),
    ("bad calibrated bits", lambda m, t: m.update(calibrated_bits="[99]"), "does not build a model .*bit-width"),
    ("other depth", lambda m, t: set_kwargs(m, depth=14), "layers do not match model resnet_cifar"),
    ("scheme", lambda m, t: set_layer(m, _first_layer(m), scheme="original"), "stores 'original' codes"),
    ("scheme everywhere", lambda m, t: (set_kwargs(m, weight_quant_scheme="centered")),
     "stores 'modified' codes, but the model it describes quantizes with 'centered'"),
    ("layout not a dict", lambda m, t: set_layer(m, _first_layer(m), whole=[1, 2]), "layout of layer .* is malformed"),
    ("no code_bits", lambda m, t: set_layer(m, _first_layer(m), code_bits=None), "layout of layer .* is malformed"),
    ("shape", lambda m, t: set_layer(m, _first_layer(m), shape=[4, 1, 3, 3]), "stored with shape \\[4, 1, 3, 3\\]"),
    ("code_bits", lambda m, t: set_layer(m, _first_layer(m), code_bits=[4]), "stored with code_bits \\[4\\]"),
    ("weight_bits", lambda m, t: set_layer(m, _first_layer(m), weight_bits=[6, 6]), "stored with weight_bits \\[6, 6\\]"),
    ("classes", lambda m, t: set_kwargs(m, num_classes=9), "layer fc is stored with shape"),
    ("truncated codes", lambda m, t: t.update({"conv1.weight_codes.8": t["conv1.weight_codes.8"][:-1]}),
     "conv1 has malformed 8-bit codes"),
    ("codes as float", lambda m, t: t.update({"conv1.weight_codes.8": t["conv1.weight_codes.8"].float()}),
     "conv1 has malformed 8-bit codes"),
    ("codes missing", lambda m, t: t.pop("conv1.weight_codes.8"), "conv1 has malformed 8-bit codes \\(missing"),
    ("sat scales", lambda m, t: t.update({"fc.sat_scale": t["fc.sat_scale"][:1]}), "fc stores 1 SAT scales, expected 2"),
    ("bn shape", lambda m, t: t.update({k: t[k][:-1] for k in [next(k for k in t if k.endswith("running_mean"))]}),
     "does not fit model resnet_cifar: size mismatch"),
    ("bn missing", lambda m, t: t.pop(next(k for k in t if k.endswith("running_var"))), "does not fit .*missing"),
]


@pytest.mark.parametrize("change, message", [(c, m) for _, c, m in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_consistent_but_malformed_file_is_a_packed_format_error(packed, change, message):
    rewrite(packed, change)
    with pytest.raises(PackedFormatError, match=message):
        load_packed(packed)
