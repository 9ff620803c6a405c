"""An ONNX folder stores the nested weight codes once (`weights.bin`) and every file derives its own weights from
them (`adabits/export/shared_weights.py`): the folder is smaller, each file computes what its own copy computed,
and ONNX Runtime folds the derivation away when the session is created."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _pretrained import fashion_mnist, trained_cnn
from hypothesis import given, settings
from hypothesis import strategies as st

import adabits
from adabits.export.shared_weights import SHARED_FILE, LayerCodes, _channel_factors
from adabits.quant.config import QuantConfig
from adabits.quant.layers import QuantLayer
from adabits.runtime import load

pytest.importorskip("onnxruntime")
BITS = [8, 6, 4]


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    images, labels = fashion_mnist(2048 + 256)
    return {"train": images[:2048], "labels": labels[:2048], "test": images[2048:]}


def _converted(data, scheme: str) -> torch.nn.Module:
    model = trained_cnn(data["train"], data["labels"], width=32)
    config = QuantConfig.pretrained(weight_quant_scheme=scheme)
    return adabits.quantize_model(model, BITS, config, calibration=list(data["train"][:256].split(64))).eval()


def _export(model, path: Path, data, shared: bool) -> adabits.export.model_export.Exported:
    return adabits.export_model(model, path, format="onnx", example=(1, 28, 28), calibration=data["train"][:256],
                                shared_weights=shared)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".bin"))


@pytest.mark.parametrize("scheme", ["modified", "centered"])
def test_a_folder_stores_its_codes_once_and_computes_what_its_own_copies_do(data, tmp_path, scheme):
    """Each file's logits in ONNX Runtime equal those of the same file with its own weights, bit for bit, at
    every bit-width; the folder is smaller, and the derivation is folded: the optimized graphs run the same ops."""
    from adabits.export.onnx_session import optimized_op_counts

    model = _converted(data, scheme)
    own, shared = _export(model, tmp_path / "own", data, False), _export(model, tmp_path / "shared", data, True)
    assert not (own.path / SHARED_FILE).exists() and (shared.path / SHARED_FILE).is_file()
    assert any(SHARED_FILE in note for note in shared.notes)
    assert _size(shared.path) < _size(own.path)
    ours, theirs = load(shared.path), load(own.path)
    for bits in BITS:
        np.testing.assert_array_equal(ours.run(data["test"], bits=bits), theirs.run(data["test"], bits=bits))
        name = f"model_{bits}bit.onnx"
        assert optimized_op_counts(shared.path / name) == optimized_op_counts(own.path / name)


def test_a_folder_of_one_bit_width_is_left_as_written(data, tmp_path):
    """No layer's codes serve two files, so nothing is shared, and the weights.bin of an earlier export to the same
    folder goes (as it does for shared_weights=False)."""
    model = _converted(data, "centered")
    assert (_export(model, tmp_path / "one", data, True).path / SHARED_FILE).is_file()
    done = adabits.export_model(model, tmp_path / "one", format="onnx", example=(1, 28, 28), bits=[4],
                                calibration=data["train"][:256])
    assert not (done.path / SHARED_FILE).exists()
    assert (_export(model, tmp_path / "one", data, True).path / SHARED_FILE).is_file()
    assert not (_export(model, tmp_path / "one", data, False).path / SHARED_FILE).exists()
    assert load(done.path).run(data["test"][:8], bits=4).shape == (8, 10)


def test_four_bit_widths_of_a_resnet20_take_under_half_the_bytes_of_four_copies(tmp_path):
    """Sizes only (weights as initialised): the {8,6,5,4} folder against the same files with their own copies."""
    torch.manual_seed(0)
    model = adabits.create_model("resnet20", bits_list=[8, 6, 5, 4], num_classes=10, in_chans=1).eval()
    images = torch.randn(32, 1, 28, 28)
    own = adabits.export_model(model, tmp_path / "own", format="onnx", example=images[:1], calibration=images,
                               shared_weights=False)
    shared = adabits.export_model(model, tmp_path / "shared", format="onnx", example=images[:1], calibration=images)
    assert _size(shared.path) < 0.5 * _size(own.path)


def test_a_missing_weights_file_is_one_line_naming_the_file(data, tmp_path):
    from adabits.errors import ExportedFileError

    folder = _export(_converted(data, "modified"), tmp_path / "shared", data, True).path
    (folder / SHARED_FILE).unlink()
    with pytest.raises(ExportedFileError, match="model_"):
        load(folder)


@settings(max_examples=40, deadline=None)
@given(scheme=st.sampled_from(["modified", "centered"]), per_channel=st.booleans(), top=st.integers(2, 8),
       drop=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_the_stored_codes_give_the_signed_codes_of_every_lower_bit_width(scheme, per_channel, top, drop, seed):
    """The nesting the derivation relies on, checked against the layer's own codes at each bit-width."""
    bits = max(1, top - drop)
    torch.manual_seed(seed)
    config = QuantConfig.pretrained(weight_quant_scheme=scheme) if per_channel else QuantConfig(weight_quant_scheme=scheme)
    model = adabits.quantize_model(torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3)), sorted({top, bits}), config,
                                   first_last_policy=False)
    layer = next(m for m in model.modules() if isinstance(m, QuantLayer))
    stored = LayerCodes("0", layer, top, layer.weight_codes(top).numpy().astype(np.uint8))
    np.testing.assert_array_equal(stored.signed(bits)[0], layer.signed_weight_codes(bits)[0].numpy())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), channels=st.integers(1, 8), low=st.integers(-15, 0))
def test_channel_factors_are_found_exactly_or_not_at_all(seed, channels, low):
    rng = np.random.default_rng(seed)
    m = rng.integers(low, 16, size=(channels, 9))
    factors = rng.integers(1, 5, size=channels)
    stored = (m * factors[:, None]).astype(np.int8)
    found = _channel_factors(stored, m)
    assert found is not None and np.array_equal(found[:, None] * m, stored)
    changed = stored.copy()
    changed.flat[rng.integers(changed.size)] += 1
    assert _channel_factors(changed, m) is None
    weights = (m * rng.uniform(0.01, 1, size=(channels, 1))).astype(np.float32)
    assert _channel_factors(weights, m) is not None
    others = np.flatnonzero(m[0])
    others = others[others != np.abs(m[0]).argmax()]
    if len(others):  # a weight off its channel's grid by 0.1 %
        weights[0, others[0]] *= np.float32(1.001)
        assert _channel_factors(weights, m) is None
