"""Starting from a pretrained float model: the per-channel weight quantizer keeps the float layer's function,
calibration touches only the bit-width it calibrates, and a bad calibration input is one clear error."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adabits
from adabits.errors import CalibrationError, QuantOptionError
from adabits.quant.functional import channel_codes, channel_max, channel_weight
from adabits.quant.layers import QConv2d, QLinear


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


@pytest.fixture(scope="module")
def pretrained() -> tuple[nn.Module, torch.Tensor]:
    """A small CNN trained in plain PyTorch to separate four classes of structured images (not a random net)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (1024,), generator=gen)
    pattern = torch.randn(4, 1, 12, 12, generator=gen)
    images = pattern[labels] + 0.8 * torch.randn(1024, 1, 12, 12, generator=gen)
    net = _cnn()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for start in range(0, 1024, 64):
            loss = nn.functional.cross_entropy(net(images[start:start + 64]), labels[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return net, images


# ---------------------------------------------------------------- the per-channel weight quantizer
@given(bits=st.integers(2, 12), seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
@settings(max_examples=40, deadline=None)
def test_channel_weight_is_within_half_a_step_of_the_weight_and_nested(bits, seed, scale):
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(seed)) * scale
    top = channel_max(weight)
    quantized = channel_weight(weight, bits, "centered", top)
    step = (2 * top / 2**bits).reshape(-1, 1, 1, 1)
    assert ((quantized - weight).abs() <= step / 2 * (1 + 1e-3)).all()  # float32 rounding of u moves a boundary by ~2e-4 steps at 12 bits
    high = channel_codes(weight, 12, "centered", top)
    assert torch.equal(channel_codes(weight, bits, "centered", top), high >> (12 - bits))


def test_a_converted_float_layer_computes_what_the_float_layer_computed():
    torch.manual_seed(1)
    conv, linear = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(16, 5)
    x, v = torch.randn(2, 4, 6, 6), torch.randn(3, 16)
    config = adabits.QuantConfig.pretrained()
    qconv = adabits.quantize_model(copy.deepcopy(conv), [32, (16, 32), 4], config, first_last_policy=False)
    qlinear = adabits.quantize_model(copy.deepcopy(linear), [32, (16, 32), 4], config, first_last_policy=False)
    assert isinstance(qconv, QConv2d) and isinstance(qlinear, QLinear)
    for layer in (qconv, qlinear):
        layer.alpha.data.fill_(100.0)  # clipping far above every input: only the rounding differs
    adabits.set_bits(qconv, 32), adabits.set_bits(qlinear, 32)
    assert torch.equal(qconv(x), conv(x)) and torch.equal(qlinear(v), linear(v))
    adabits.set_bits(qconv, (16, 32)), adabits.set_bits(qlinear, (16, 32))  # weights at 16 bits: float rounding
    torch.testing.assert_close(qconv(x), conv(x), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(qlinear(v), linear(v), rtol=1e-3, atol=1e-3)


def test_the_seed_default_is_unchanged_without_calibration():
    model = adabits.quantize_model(_cnn(), [8, 4])
    layer = model[3]
    assert layer.weight_quantizer == "dorefa" and not layer.per_channel and not hasattr(layer, "weight_clip")


def test_channel_weights_refuse_the_sat_transform():
    with pytest.raises(QuantOptionError, match="clamp, rescale"):
        adabits.QuantConfig(weight_quantizer="channel")
    with pytest.raises(QuantOptionError, match="weight_quantizer"):
        adabits.QuantConfig(weight_quantizer="tanh")


# ---------------------------------------------------------------- calibration
def test_calibration_keeps_the_float_models_predictions(pretrained):
    net, images = pretrained
    batches = list(images[:512].split(128))
    with torch.no_grad():
        reference = net(images[512:]).argmax(1)
    model = adabits.quantize_model(copy.deepcopy(net), [8, 6, 4], calibration=batches)
    model.eval()
    agreement = {}
    for bits in (8, 6, 4):
        adabits.set_bits(model, bits)
        with torch.no_grad():
            agreement[bits] = (model(images[512:]).argmax(1) == reference).float().mean().item()
    assert agreement[8] >= 0.99 and agreement[6] >= 0.98 and agreement[4] >= 0.9, agreement
    report = str(adabits.conversion_report(model))
    assert "output drift" in report and "8: " in report and "4: " in report


def test_without_calibration_the_same_model_loses_its_predictions(pretrained):
    """The other side of the test above: what calibration fixes (fixed clipping levels of 8 or 10)."""
    net, images = pretrained
    model = adabits.quantize_model(copy.deepcopy(net), [4]).eval()
    with torch.no_grad():
        agreement = (model(images[512:]).argmax(1) == net(images[512:]).argmax(1)).float().mean().item()
    assert agreement < 0.9


def _per_bit_state(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, adabits.QuantLayer) and module.alpha is not None:
            state[f"{name}.alpha"] = module.alpha.detach()[index].clone()
        if isinstance(module, adabits.SwitchBatchNorm2d):
            for key, value in module.bn[index].state_dict().items():
                state[f"{name}.bn.{index}.{key}"] = value.clone()
    return state


def test_calibrating_one_bit_width_leaves_the_others_untouched(pretrained):
    net, images = pretrained
    model = adabits.quantize_model(copy.deepcopy(net), [8, 6, 4], adabits.QuantConfig.pretrained())
    model.eval()

    def outputs() -> dict[int, torch.Tensor]:
        with torch.no_grad():
            return {bits: model(images[:64]) for bits in (8, 6, 4) if not adabits.set_bits(model, bits)}

    before = {index: _per_bit_state(model, index) for index in range(3)}
    logits = outputs()
    adabits.calibrate(model, [images[:256]], bits=[6])
    after = {index: _per_bit_state(model, index) for index in range(3)}
    for index in (0, 2):
        for key, value in before[index].items():
            assert torch.equal(value, after[index][key]), key
    assert any(not torch.equal(v, after[1][k]) for k, v in before[1].items())
    now = outputs()
    assert torch.equal(now[8], logits[8]) and torch.equal(now[4], logits[4]) and not torch.equal(now[6], logits[6])


def test_calibration_restores_mode_and_bit_width_and_reports(pretrained):
    net, images = pretrained
    model = adabits.quantize_model(copy.deepcopy(net), [8, 4], adabits.QuantConfig.pretrained())
    model.train()
    adabits.set_bits(model, 4)
    with torch.no_grad():
        reference = {0: net(images[:64])}
    report = adabits.calibrate(model, [(images[:64], torch.zeros(64))], reference=reference)
    assert model.training and adabits.get_bits(model) == 4
    assert set(report.drift) == {8, 4} and report.images == 64
    assert 0 <= report.drift[8]["3"] < report.drift[4]["3"]
    assert report.top1_agreement[8] >= report.top1_agreement[4] - 0.05
    assert "8-bit" in str(report)


def test_a_calibrated_model_saves_and_loads_its_weight_clipping(pretrained):
    net, images = pretrained
    model = adabits.quantize_model(copy.deepcopy(net), [8, 4], calibration=[images[:128]]).eval()
    fresh = adabits.quantize_model(copy.deepcopy(net), [8, 4], adabits.QuantConfig.pretrained()).eval()
    fresh.load_state_dict(model.state_dict())
    for bits in (8, 4):
        adabits.set_bits(model, bits), adabits.set_bits(fresh, bits)
        with torch.no_grad():
            assert torch.equal(model(images[:32]), fresh(images[:32]))


_BAD_BATCHES = st.one_of(
    st.just([]),
    st.just(torch.randn(4, 1, 12, 12)),  # one tensor, not an iterable of batches
    st.integers(),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.lists(st.just(torch.zeros(4, 1, 12, 12, dtype=torch.uint8)), min_size=1, max_size=2),
    st.lists(st.just(torch.zeros(0, 1, 12, 12)), min_size=1, max_size=2),
    st.just([torch.randn(4, 1, 12, 12), torch.randn(4, 1, 10, 10)]),
    st.just([torch.randn(4)]),
    st.just([("not", "a tensor")]),
)


def _convert_calibrating(batches: object) -> None:
    adabits.quantize_model(_cnn(), [8, 4], calibration=batches)


def _calibrate_converted(batches: object) -> None:
    adabits.calibrate(adabits.quantize_model(_cnn(), [8, 4], adabits.QuantConfig.pretrained()), batches)


@pytest.mark.parametrize("entry", [_convert_calibrating, _calibrate_converted])
@given(batches=_BAD_BATCHES)
@settings(max_examples=30, deadline=None)
def test_a_bad_calibration_input_is_one_clear_error(entry, batches):
    with pytest.raises(CalibrationError) as error:
        entry(batches)
    assert "\n" not in str(error.value) and "calibration" in str(error.value)


# ---------------------------------------------------------------- deployment of a calibrated pretrained model
@pytest.mark.parametrize("bits", [4, 6])
def test_the_integer_and_qdq_graphs_compute_what_the_calibrated_model_computes(pretrained, bits):
    from adabits.export.integer_graph import integer_graph
    from adabits.export.qdq import qdq_model

    net, images = pretrained
    model = adabits.quantize_model(copy.deepcopy(net), [8, 6, 4], calibration=[images[:256]]).eval()
    with adabits.use_bits(model, bits), torch.no_grad():
        expected = model(images[512:768])
    graph = integer_graph(model, bits, (1, 12, 12), images[:256], uint8_input=False)
    qdq = qdq_model(model, bits, (1, 12, 12), uint8_input=False)
    with torch.no_grad():
        for got in (graph.module(images[512:768]), qdq.module(images[512:768])):
            assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.98


def test_a_gelu_output_keeps_its_negatives_when_that_matters():
    """GELU's outputs reach -0.17: the first-input rule clips them (one-sided); calibration compares both sides'
    quantization error at the layer's bit-widths and keeps them (two-sided), which costs a ViT's MLP layers far less."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))
    inputs = torch.randn(512, 16)
    rule = adabits.quantize_model(copy.deepcopy(net), [8, 6])
    rule(inputs[:8])  # the first input decides: one-sided after GELU
    assert rule[2].clipping_side == "one-sided (auto)"
    calibrated = adabits.quantize_model(copy.deepcopy(net), [8, 6], calibration=[inputs])
    assert calibrated[2].clipping_side == "two-sided (auto)"
    assert calibrated[2].output_drift[8] < 0.02 and calibrated[2].output_drift[6] < 0.1, calibrated[2].output_drift
