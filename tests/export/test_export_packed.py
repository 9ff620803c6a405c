"""One packed file for every bit-width: nested codes, bit packing, bit-exact reload."""
from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors import safe_open

import adabits
from adabits.errors import PackedFormatError
from adabits.export import load_packed, save_packed
from adabits.export.packed import pack_codes, unpack_codes
from adabits.quant.bn_calibration import calibrate_bn
from adabits.quant.functional import quantize_codes


@pytest.mark.parametrize("scheme", ["modified", "centered"])
def test_lower_bit_codes_are_the_top_codes_shifted_right(scheme: str) -> None:
    unit = torch.cat([torch.rand(100_000, generator=torch.Generator().manual_seed(0)),
                      torch.tensor([0.0, 1.0, 0.5, 1 - 2**-24])])
    for top in range(1, 9):
        codes = quantize_codes(unit, top, scheme).long()
        for bits in range(1, top + 1):
            assert torch.equal(codes >> (top - bits), quantize_codes(unit, bits, scheme).long()), (top, bits)


def test_original_scheme_is_not_nested() -> None:
    unit = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    shifted = quantize_codes(unit, 8, "original").long() >> 4
    assert not torch.equal(shifted, quantize_codes(unit, 4, "original").long())


@pytest.mark.parametrize("bits", [1, 3, 4, 8, 11])
def test_pack_round_trip(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (1001,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)


def build(scheme: str, bits_list=(8, 6, 5, 4), **extra) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    kwargs = {"bits_list": list(bits_list), "num_classes": 10, "in_chans": 1, "weight_quant_scheme": scheme,
              "depth": 8, "rescale_conv": True, **extra}
    model = adabits.create_model("resnet_cifar", **kwargs)
    model.train()
    with torch.no_grad():  # give every per-bit BN its own statistics
        for bits in bits_list:
            adabits.set_bits(model, bits)
            model(torch.randint(0, 256, (8, 1, 16, 16)).float())
    return model.eval(), kwargs


def assert_same_logits(model: torch.nn.Module, loaded: torch.nn.Module) -> None:
    x = torch.randint(0, 256, (4, 1, 16, 16)).float()
    for bits in adabits.get_bits_list(model):
        with torch.no_grad(), adabits.use_bits(model, bits), adabits.use_bits(loaded, bits):
            diff = (model(x) - loaded(x)).abs().max().item()
        assert diff <= 1e-4, (bits, diff)


@pytest.mark.parametrize("scheme", ["modified", "centered", "original"])
def test_load_packed_gives_the_fake_quant_logits_at_every_bit_width(tmp_path, scheme: str) -> None:
    model, kwargs = build(scheme, rescale_type="stddev" if scheme == "centered" else "constant")
    path = tmp_path / "model.safetensors"
    save_packed(model, path, model_name="resnet_cifar", model_kwargs=kwargs)
    loaded = load_packed(path)
    assert adabits.get_bits_list(loaded) == [8, 6, 5, 4] and not loaded.training
    assert_same_logits(model, loaded)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    layout = json.loads(meta["layers"])
    assert json.loads(meta["bits_list"]) == [8, 6, 5, 4] and meta["model_name"] == "resnet_cifar"
    codes = {k for k in keys if ".weight_codes." in k}
    if scheme == "original":  # not nested: one set of codes per weight bit-width of the layer
        assert layout["layers.0.conv1"]["code_bits"] == [4, 5, 6, 8]
        assert "layers.0.conv1.weight_codes.4" in codes
    else:
        assert layout["layers.0.conv1"]["code_bits"] == [8]
        assert codes == {f"{name}.weight_codes.8" for name in layout}
    assert not any(k.endswith(".weight") and k.rsplit(".", 1)[0] in layout for k in keys)  # no float weights


def test_packed_file_is_about_top_bits_over_32_of_the_float_weights(tmp_path) -> None:
    model, kwargs = build("modified")
    path = tmp_path / "model.safetensors"
    save_packed(model, path, model_name="resnet_cifar", model_kwargs=kwargs)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (adabits.QConv2d, adabits.QLinear)))
    packed = path.stat().st_size
    assert packed < buffer.tell() / 2
    assert packed >= weights  # 8 bits per weight, plus per-bit BN / alpha / scales and the header
    assert packed - weights < 0.5 * buffer.tell()


def test_full_precision_entry_stores_the_float_weight_and_calibrated_bits_survive(tmp_path) -> None:
    model, kwargs = build("modified", bits_list=(8, 4, 32))
    calibrate_bn(model, 6, [torch.randint(0, 256, (8, 1, 16, 16)).float()], num_batches=1)
    path = tmp_path / "model.safetensors"
    save_packed(model, path, model_name="resnet_cifar", model_kwargs=kwargs)
    loaded = load_packed(path)
    assert adabits.get_bits_list(loaded) == [8, 4, 32, 6]
    assert_same_logits(model, loaded)


def test_load_packed_errors(tmp_path) -> None:
    with pytest.raises(PackedFormatError, match="packed model not found"):
        load_packed(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PackedFormatError, match="not a readable safetensors file"):
        load_packed(tmp_path / "junk.safetensors")


def _own_net() -> torch.nn.Module:
    """A plain PyTorch CNN of one's own (no registry name)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


def _converted(bits_list=(8, 4)) -> torch.nn.Module:
    batches = [torch.randint(0, 256, (8, 1, 16, 16)).float() for _ in range(2)]
    return adabits.quantize_model(_own_net(), bits_list, calibration=batches).eval()


def test_a_model_of_ones_own_loads_into_the_model_built_the_same_way(tmp_path) -> None:
    """No registry name: the file loads into a model one passes (grown to the calibrated bit-widths), and
    every bit-width gives the fake-quant logits; without a model, one line says so."""
    model = _converted()
    calibrate_bn(model, 6, [torch.randint(0, 256, (8, 1, 16, 16)).float()], num_batches=1)
    path = tmp_path / "own.safetensors"
    done = adabits.export_model(model, path, format="packed")
    assert done.graph == "packed" and done.bits == [8, 4, 6] and "load_packed(path, model=...)" in done.how
    with pytest.raises(PackedFormatError, match=r"holds a model of one's own .* load_packed\(path, model=\.\.\.\)"):
        load_packed(path)
    fresh = _converted()
    loaded = load_packed(path, model=fresh)
    assert loaded is fresh and adabits.get_bits_list(loaded) == [8, 4, 6] and not loaded.training
    assert_same_logits(model, loaded)
    with pytest.raises(PackedFormatError, match=r"stores bit-widths \[8, 4, 6\]; the model given runs at \[8, 5\]"):
        load_packed(path, model=_converted(bits_list=(8, 5)))
    other = adabits.quantize_model(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                                                       torch.nn.Linear(4 * 14 * 14, 10)), [8, 4])
    with pytest.raises(PackedFormatError, match="its layers do not match the model given"):
        load_packed(path, model=other)


def test_a_registered_models_file_also_loads_into_a_model_given(tmp_path) -> None:
    model, kwargs = build("modified", bits_list=(8, 4))
    path = tmp_path / "model.safetensors"
    done = adabits.export_model(model, path, format="packed", model_name="resnet_cifar", model_kwargs=kwargs)
    assert "load_packed(path) rebuilds resnet_cifar" in done.how
    assert_same_logits(model, load_packed(path))
    assert_same_logits(model, load_packed(path, model=adabits.create_model("resnet_cifar", **kwargs)))


def test_packed_export_arguments(tmp_path) -> None:
    model, kwargs = build("modified", bits_list=(8, 4))
    path = tmp_path / "model.safetensors"
    with pytest.raises(PackedFormatError, match="model_name and model_kwargs together"):
        save_packed(model, path, model_name="resnet_cifar")
    with pytest.raises(ValueError, match="a packed file holds every bit-width"):
        adabits.export_model(model, path, format="packed", bits=4)
    with pytest.raises(ValueError, match="graph= applies to pte and onnx"):
        adabits.export_model(model, path, format="packed", graph="qdq")
    assert not path.exists()
