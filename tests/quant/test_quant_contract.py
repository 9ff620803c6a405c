"""The one contract between the quantized layers and their readers (exporters, calibration, profiling).

The scheme objects define codes and values once; the layers answer with their codes, signed codes,
SAT scale, clipping level and input step; and what the exporters store or fold equals what the
layers compute, at every bit-width and scheme.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import adabits
from adabits.errors import QuantOptionError
from adabits.export import load_packed, save_packed
from adabits.export.int8_layer import fold_layer
from adabits.quant import SCHEMES, QuantLayer, SwitchBatchNorm2d, get_scheme
from adabits.quant.functional import codes_to_weight, quantize_unit, quantize_weight

ROOT = Path(__file__).resolve().parents[2]
UNIT = torch.cat([torch.rand(20_000, generator=torch.Generator().manual_seed(0)),
                  torch.tensor([0.0, 1.0, 0.5, 1 - 2**-24])])


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("bits", range(1, 9))
def test_scheme_codes_values_and_signed_form_agree(name: str, bits: int) -> None:
    scheme = get_scheme(name)
    codes = scheme.codes(UNIT, bits)
    assert codes.min() >= 0 and codes.max() <= scheme.max_code(bits)
    assert torch.equal(codes, codes.round())
    assert torch.equal(scheme.values(codes, bits), quantize_unit(UNIT, bits, name))
    m, step = scheme.signed(codes, bits)
    assert m.dtype == torch.int64
    torch.testing.assert_close((m * step).float(), 2 * scheme.values(codes, bits) - 1, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_nested_is_what_the_codes_do(name: str) -> None:
    scheme = get_scheme(name)
    shifts_hold = all(torch.equal(scheme.codes(UNIT, top).long() >> (top - b), scheme.codes(UNIT, b).long())
                      for top in range(2, 9) for b in range(1, top))
    assert scheme.nested == shifts_hold


def test_signed_codes_of_8_bits_fit_int8_only_for_modified() -> None:
    for name in SCHEMES:
        scheme = get_scheme(name)
        m, _ = scheme.signed(scheme.codes(UNIT, 8), 8)
        fits = bool(m.min() >= -128 and m.max() <= 127)
        assert fits == (name == "modified"), name


def test_unknown_scheme_names_the_allowed_ones() -> None:
    with pytest.raises(QuantOptionError, match="allowed: original, modified, centered"):
        get_scheme("uniform")
    with pytest.raises(ValueError):  # a ValueError too, for plain-Python callers
        adabits.QuantConfig(weight_quant_scheme="uniform")


def _model(scheme: str, bits_list=(8, 6, 5, 4, 3, 2)) -> torch.nn.Module:
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=list(bits_list), num_classes=10, in_chans=1,
                                 weight_quant_scheme=scheme, rescale_conv=True)
    model.train()
    with torch.no_grad():
        for bits in bits_list:
            adabits.set_bits(model, bits)
            model(torch.randint(0, 256, (8, 1, 16, 16)).float())
    return model.eval()


def _layers(model: torch.nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def _every_layer_at_every_bits(model: torch.nn.Module) -> Iterator[tuple[object, str, QuantLayer]]:
    """(bits, layer name, layer) with the model switched to those bits."""
    for bits in adabits.get_bits_list(model):
        adabits.set_bits(model, bits)
        for name, layer in _layers(model).items():
            yield bits, name, layer


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_layer_weight_is_its_codes_times_its_sat_scale(scheme: str) -> None:
    for bits, name, layer in _every_layer_at_every_bits(_model(scheme)):
        weight = layer.quantized_weight().detach()
        b = layer.weight_bits
        from_codes = codes_to_weight(layer.weight_codes(), b, scheme) * layer.weight_sat_scale()
        assert torch.equal(weight, from_codes), (name, bits)
        m, step = layer.signed_weight_codes()
        torch.testing.assert_close(m.double() * step * float(layer.weight_sat_scale()), weight.double(),
                                   rtol=1e-6, atol=1e-7)
        unscaled = quantize_weight(layer.weight, b, scheme).detach()
        levels, offset = layer.weight_scheme.levels(b), layer.weight_scheme.offset
        recovered = ((unscaled + 1) / 2 * levels - offset).round().long()
        assert torch.equal(layer.weight_codes(), recovered), (name, bits)


def test_input_scale_and_clipping_level_follow_the_bit_width() -> None:
    model = _model("modified", (8, 4))
    layer = model.layers[0].conv1
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([-3.0, 5.0]))
    adabits.set_bits(model, 8)
    assert float(layer.current_alpha().detach()) == -3.0
    assert layer.input_scale() == pytest.approx(3.0 / 255) and layer.input_max_code() == 255
    adabits.set_bits(model, 4)
    assert layer.input_scale() == pytest.approx(5.0 / 15) and layer.input_max_code() == 15
    layer.set_current_alpha(2.0)
    assert layer.alpha.tolist() == [-3.0, 2.0]
    assert layer.quantizes_input and layer.clips_input
    stem = model.conv1  # weight-only first layer: no clipping, no input codes
    assert not stem.quantizes_input and stem.current_alpha() is None
    with pytest.raises(ValueError, match="does not quantize its input"):
        stem.input_scale()


def test_shared_alpha_and_shared_bn_answer_for_every_bit_width() -> None:
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=10, in_chans=1,
                                 switch_alpha=False, switchbn=False)
    layer, bn = model.layers[0].conv1, model.layers[0].bn1
    assert layer.alpha_shared and bn.shared
    for bits in (8, 4):
        adabits.set_bits(model, bits)
        assert layer.current_alpha() is not None and bn.active is bn.bn[0]


def test_add_bits_is_each_modules_own() -> None:
    model = _model("modified", (8, 4))
    layer, bn = model.layers[0].conv1, model.layers[0].bn1
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([2.0, 8.0]))
    layer.add_bits((6, 6))
    assert layer.bits_list[-1] == (6, 6) and float(layer.alpha[-1].detach()) == pytest.approx(4.0)  # geometric mean
    new_bn_source = bn.bn[0]  # 8 bits is the nearest trained one to 7
    bn.add_bits((7, 7))
    assert len(bn.bn) == 3 and torch.equal(bn.bn[2].weight, new_bn_source.weight)
    assert int(bn.bn[2].num_batches_tracked) == 0


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_packed_file_holds_the_layers_codes_and_sat_scales(tmp_path, scheme: str) -> None:
    model = _model(scheme)
    kwargs = {"depth": 8, "bits_list": [8, 6, 5, 4, 3, 2], "num_classes": 10, "in_chans": 1,
              "weight_quant_scheme": scheme, "rescale_conv": True}
    save_packed(model, tmp_path / "m.safetensors", model_name="resnet_cifar", model_kwargs=kwargs)
    loaded = load_packed(tmp_path / "m.safetensors")
    for bits in adabits.get_bits_list(model):
        adabits.set_bits(model, bits)
        adabits.set_bits(loaded, bits)
        for (name, ours), theirs in zip(_layers(model).items(), _layers(loaded).values()):
            if ours.weight_bits < 32:
                assert torch.equal(ours.weight_codes(), theirs.weight_codes()), (name, bits)
                assert torch.equal(ours.weight_sat_scale(), theirs.weight_sat_scale()), (name, bits)
            assert torch.equal(ours.quantized_weight().detach(), theirs.quantized_weight()), (name, bits)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_onnx_folding_reads_the_layers_signed_codes(scheme: str) -> None:
    for bits, name, layer in _every_layer_at_every_bits(_model(scheme)):
        if layer.weight_bits >= 32:
            continue
        folded = fold_layer(layer, None)
        m, step = layer.signed_weight_codes()
        assert (folded.codes == m.numpy()).all(), (name, bits)
        expected = step * float(layer.weight_sat_scale())
        assert folded.scale == pytest.approx([expected] * len(folded.scale)), (name, bits)


def test_no_reader_outside_quant_reaches_into_layer_state() -> None:
    """The per-bit lists and the index into them are the layers' own: readers use their methods."""
    pattern = re.compile(r"\.bn\[|\.alpha\[|\.bits_index\b|__class__\s*=")
    offenders = []
    for path in [*(ROOT / "adabits").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        if (ROOT / "adabits" / "quant") in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_switchable_bn_is_a_public_contract() -> None:
    assert isinstance(adabits.SwitchBatchNorm2d(4, bits_list=[8, 4]).active, torch.nn.BatchNorm2d)
    assert issubclass(adabits.QConv2d, adabits.QuantLayer) and issubclass(adabits.QLinear, adabits.QuantLayer)
    assert SwitchBatchNorm2d is adabits.SwitchBatchNorm2d
