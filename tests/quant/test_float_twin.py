"""adabits.quant.float_twin: a plain float copy of a switchable model computes what the model computes."""
import pytest
import torch
from torch import nn

import adabits
from adabits.quant.float_twin import float_twin, plain_layer


def resnet8() -> nn.Module:
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[32, 4], num_classes=10, in_chans=1)
    for module in model.modules():  # BN statistics far from the defaults, so that a wrong copy shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def images(n: int = 8) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 256, (n, 1, 28, 28)).float()


def test_twin_at_32_bits_equals_the_model_and_holds_no_quantized_layer():
    model = resnet8()
    adabits.set_bits(model, 32)
    twin = float_twin(model)
    assert not any(isinstance(m, (adabits.QConv2d, adabits.QLinear, adabits.SwitchBatchNorm2d)) for m in twin.modules())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(twin.train()(x), model.train()(x), rtol=1e-5, atol=1e-5)
    assert isinstance(model.conv1, adabits.QConv2d)  # the model itself is untouched


def test_twin_freezes_the_weights_and_bn_of_the_current_bit_width():
    model = resnet8()
    adabits.set_bits(model, 4)
    twin = float_twin(model)
    block = model.layers[0]
    torch.testing.assert_close(twin.layers[0].conv1.weight, block.conv1.quantized_weight().detach())
    assert not torch.allclose(twin.layers[0].conv1.weight, block.conv1.weight)
    assert not torch.equal(block.bn1.bn[0].running_mean, block.bn1.bn[1].running_mean)
    torch.testing.assert_close(twin.layers[0].bn1.running_mean, block.bn1.bn[1].running_mean)  # the 4-bit BN


def test_plain_layer_of_each_kind():
    linear = adabits.QLinear(6, 3, bits_list=[32])
    plain = plain_layer(linear)
    assert type(plain) is nn.Linear
    x = torch.randn(4, 6)
    torch.testing.assert_close(plain(x), linear(x))
    bn = adabits.SwitchBatchNorm2d(3, bits_list=[8, 4])
    adabits.set_bits(bn, 4)
    assert plain_layer(bn) is not bn.active and type(plain_layer(bn)) is nn.BatchNorm2d
    with pytest.raises(TypeError, match="ReLU"):
        plain_layer(nn.ReLU())


def test_twin_of_a_converted_model():
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    model = adabits.quantize_model(float_model, bits_list=[32]).eval()
    twin = float_twin(model).eval()
    assert [type(m) for m in twin] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Flatten, nn.Linear]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


def test_twin_of_a_transformer_equals_it_at_32_bits():
    torch.manual_seed(0)
    model = adabits.create_model("vit_tiny", bits_list=[32, 4], num_classes=5, image_size=8, patch_size=4, dim=16,
                                 depth=1, heads=2, mlp_dim=32).eval()
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, adabits.quant.SwitchNorm):
                norm.norms[0].bias.fill_(0.2)  # the 32-bit copy's own shift
    adabits.set_bits(model, 32)
    twin = float_twin(model).eval()
    assert not any(isinstance(m, (adabits.QuantLayer, adabits.quant.SwitchNorm)) for m in twin.modules())
    x = torch.randint(0, 256, (4, 1, 8, 8)).float()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))
