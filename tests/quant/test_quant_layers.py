"""Quantized layers, switchable BN and bit-width switching."""

import pytest
import torch
from torch import nn

import adabits
from adabits import QConv2d, QLinear, QuantConfig, SwitchBatchNorm2d


def small_net(bits_list, **config) -> nn.Sequential:
    cfg = QuantConfig(**config)
    return nn.Sequential(
        QConv2d(3, 8, 3, padding=1, bias=False, bits_list=bits_list, config=cfg),
        SwitchBatchNorm2d(8, bits_list=bits_list, switchbn=cfg.switchbn, stats_sharing=cfg.stats_sharing),
        nn.ReLU(),
        QConv2d(8, 8, 3, padding=1, bias=False, bits_list=bits_list, config=cfg),
        SwitchBatchNorm2d(8, bits_list=bits_list, switchbn=cfg.switchbn, stats_sharing=cfg.stats_sharing),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        QLinear(8, 4, bits_list=bits_list, config=cfg),
    )


def test_layers_are_drop_in_subclasses() -> None:
    conv = QConv2d(3, 8, 3, bits_list=[4])
    assert isinstance(conv, nn.Conv2d) and isinstance(QLinear(3, 2), nn.Linear)
    assert conv.alpha.shape == (1,)
    assert QConv2d(3, 8, 3, bits_list=[8, 4]).alpha.shape == (2,)
    assert QConv2d(3, 8, 3, bits_list=[8, 4], config=QuantConfig(switch_alpha=False)).alpha.shape == (1,)
    assert QConv2d(3, 8, 3, bits_list=[8, 4], weight_only=True).alpha is None


def test_float_state_dict_loads_strictly() -> None:
    conv, linear, bn = nn.Conv2d(3, 8, 3), nn.Linear(8, 4), nn.BatchNorm2d(8)
    bn.running_mean.normal_()
    qconv, qlinear = QConv2d(3, 8, 3, bits_list=[8, 4]), QLinear(8, 4, bits_list=[8, 4])
    qbn = SwitchBatchNorm2d(8, bits_list=[8, 4])
    qconv.load_state_dict(conv.state_dict())
    qlinear.load_state_dict(linear.state_dict())
    qbn.load_state_dict(bn.state_dict())
    assert torch.equal(qconv.weight, conv.weight) and torch.equal(qlinear.bias, linear.bias)
    for per_bit in qbn.bn:
        assert torch.equal(per_bit.running_mean, bn.running_mean)


def test_full_precision_unclamped_layers_equal_float_layers() -> None:
    cfg = QuantConfig(clamp=False, rescale=False)
    conv = nn.Conv2d(3, 8, 3)
    qconv = QConv2d(3, 8, 3, bits_list=[32], config=cfg)
    qconv.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(qconv(x), conv(x))


def test_rescaled_linear_gives_the_same_logits_in_train_and_eval() -> None:
    layer = QLinear(16, 10, bits_list=[4])
    nn.init.normal_(layer.bias)
    x = torch.rand(5, 16) * 4
    train_logits = layer.train()(x)
    torch.testing.assert_close(layer.eval()(x), train_logits)
    scaled = layer.quantized_weight()
    assert abs(scaled.std().item() - 10**-0.5) < 1e-4  # SAT: std of the used weight is 1/sqrt(fan_out)


def test_layer_bits_respect_minimums_and_weight_only() -> None:
    conv = QConv2d(3, 8, 3, bits_list=[8, 4, 2], bitw_min=4, bita_min=8)
    adabits.set_bits(conv, 2)
    assert (conv.weight_bits, conv.act_bits) == (4, 8)
    conv = QConv2d(3, 8, 3, bits_list=[8, 4], weight_only=True)
    adabits.set_bits(conv, 4)
    assert (conv.weight_bits, conv.act_bits) == (4, 32)
    x = torch.randn(1, 3, 5, 5)
    assert (conv(x) < 0).any()  # input not clipped to [0, alpha]


def test_activations_are_quantized_to_the_current_bits() -> None:
    layer = QLinear(6, 1, bias=False, bits_list=[2])
    captured = {}
    layer.register_forward_hook(lambda m, inputs, out: captured.setdefault("x", m.quantized_input(inputs[0])))
    layer(torch.rand(100, 6) * 20)
    levels = torch.unique(captured["x"])
    torch.testing.assert_close(levels, torch.tensor([0.0, 10 / 3, 20 / 3, 10.0]))


@pytest.mark.parametrize("stats_sharing", [False, True])
def test_training_at_one_bit_width_touches_only_its_bn_and_alpha(stats_sharing: bool) -> None:
    torch.manual_seed(0)
    bits_list = [8, 6, 4]
    model = small_net(bits_list, stats_sharing=stats_sharing)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adabits.set_bits(model, 6)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
        optimizer.step()
    after = model.state_dict()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert not torch.equal(after[f"1.bn.1.{name}"], before[f"1.bn.1.{name}"])
        for index in (0, 2):
            assert torch.equal(after[f"1.bn.{index}.{name}"], before[f"1.bn.{index}.{name}"])
    alpha_before, alpha_after = before["3.alpha"], after["3.alpha"]
    assert alpha_after[1] != alpha_before[1]
    assert alpha_after[0] == alpha_before[0] and alpha_after[2] == alpha_before[2]
    if stats_sharing:
        assert model[1].bn[0].weight is model[1].bn[2].weight
        assert not torch.equal(after["1.bn.0.weight"], before["1.bn.0.weight"])
    else:
        assert torch.equal(after["1.bn.0.weight"], before["1.bn.0.weight"])
        assert not torch.equal(after["1.bn.1.weight"], before["1.bn.1.weight"])


def test_switchbn_false_shares_one_bn() -> None:
    bn = SwitchBatchNorm2d(4, bits_list=[8, 4], switchbn=False)
    assert len(bn.bn) == 1
    adabits.set_bits(bn, 4)
    bn(torch.randn(2, 4, 3, 3))
    assert bn.bn[0].num_batches_tracked == 1


def test_set_get_and_use_bits() -> None:
    model = small_net([8, 6, 4])
    assert adabits.get_bits(model) == 8
    assert adabits.get_bits_list(model) == [8, 6, 4]
    adabits.set_bits(model, 4)
    assert adabits.get_bits(model) == 4
    assert all(m.bits == (4, 4) for m in model.modules() if isinstance(m, (QConv2d, SwitchBatchNorm2d)))
    with adabits.use_bits(model, 6):
        assert adabits.get_bits(model) == 6
    assert adabits.get_bits(model) == 4
    with pytest.raises(RuntimeError, match="boom"), adabits.use_bits(model, 8):
        raise RuntimeError("boom")
    assert adabits.get_bits(model) == 4


def test_pairs_of_bits() -> None:
    model = small_net([(8, 8), (4, 8), 4])
    adabits.set_bits(model, (4, 8))
    assert adabits.get_bits(model) == (4, 8)
    assert model[3].weight_bits == 4 and model[3].act_bits == 8
    adabits.set_bits(model, (8, 8))
    assert adabits.get_bits(model) == 8


@pytest.mark.parametrize(
    "bits, message",
    [
        (0, "from 1 to 32"),
        (-1, "from 1 to 32"),
        (33, "from 1 to 32"),
        (4.5, "must be an integer"),
        ("4", "must be an integer"),
        (True, "must be an integer"),
        ((4,), "pair"),
        ((4, 0), "activation bits"),
        (5, "allowed: 8, 6, 4"),
    ],
)
def test_bad_bit_widths_are_refused_clearly(bits, message: str) -> None:
    model = small_net([8, 6, 4])
    adabits.set_bits(model, 6)
    with pytest.raises(ValueError, match=message):
        adabits.set_bits(model, bits)
    assert adabits.get_bits(model) == 6  # nothing changed


def test_bits_list_is_validated() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        QConv2d(3, 3, 1, bits_list=[4, 4])
    with pytest.raises(ValueError, match="empty"):
        SwitchBatchNorm2d(3, bits_list=[])
    with pytest.raises(ValueError, match="from 1 to 32"):
        QLinear(3, 3, bits_list=[0])


def test_nothing_is_written_on_plain_modules() -> None:
    model = small_net([8, 4])
    plain = [m for m in model.modules() if not isinstance(m, (QConv2d, QLinear, SwitchBatchNorm2d))]
    before = [dict(vars(m)) for m in plain]
    adabits.set_bits(model, 4)
    assert [dict(vars(m)) for m in plain] == before


def test_models_without_quantized_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="quantize_model"):
        adabits.set_bits(nn.Linear(2, 2), 4)


@pytest.mark.parametrize("config", [QuantConfig(weight_quant_scheme="centered"), QuantConfig(double_side=True),
                                    QuantConfig(pact_fp=True), QuantConfig(rescale_conv=True, rescale_type="stddev")])
def test_every_option_runs_forward_and_backward(config: QuantConfig) -> None:
    model = small_net([8, 4, 32], **{k: getattr(config, k) for k in QuantConfig.field_names()})
    for bits in (8, 4, 32):
        adabits.set_bits(model, bits)
        out = model(torch.randn(2, 3, 8, 8))
        out.sum().backward()
        assert torch.isfinite(out).all()


def test_quant_config_is_validated() -> None:
    with pytest.raises(ValueError, match="allowed: original, modified, centered"):
        QuantConfig(weight_quant_scheme="linear")
    with pytest.raises(ValueError, match="rescale_type"):
        QuantConfig(rescale_type="max")
    with pytest.raises(ValueError, match="true or false"):
        QuantConfig(clamp="yes")  # type: ignore[arg-type]
