"""benchmarks/training/peers.py: the float twin of our model, and the Brevitas and torch.ao peers built from it."""

from pathlib import Path

import brevitas  # noqa: F401  (CI installs the dev extra: a missing Brevitas fails here, it is never skipped)
import pytest
import torch

import adabits
from adabits.engine import load_config
from adabits.engine.build import build_model
from benchmarks.training import peers

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "apps/fashion_mnist/q_resnet20_adabits.yml"


def config(*overrides: str):
    return load_config([f"app:{ROOT / CONFIG}", *overrides]).config


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory) -> Path:
    """A float ResNet-20 (bits [32]) with random weights and random BN statistics, saved as stage 1 saves it."""
    torch.manual_seed(0)
    model = build_model(config("bits_list=[32]", "quantize_residual=false"), 10, 1)  # stage 1 has no observers
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("fp") / "best_model.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def twin(fp_checkpoint):
    return peers.float_twin(peers.our_float_model(config("bits_list=[4]", f"fp_pretrained_file={fp_checkpoint}"), 10, 1))


def images(n: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 256, (n, 1, 28, 28)).float().contiguous(memory_format=torch.channels_last)


def test_twin_equals_our_float_model(fp_checkpoint):
    ours = peers.our_float_model(config("bits_list=[4]", f"fp_pretrained_file={fp_checkpoint}"), 10, 1)
    assert ours.conv1.weight_bits == 32 and ours.fc.weight_bits == 32
    twin = peers.float_twin(ours)
    assert not any(isinstance(m, (adabits.QConv2d, adabits.QLinear)) for m in twin.modules())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), ours.eval()(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(twin.train()(x), ours.train()(x), rtol=1e-5, atol=1e-5)  # batch statistics too
    # the twin holds the effective (tanh-normalised, SAT-rescaled) weights, not the raw ones
    assert not torch.allclose(twin.conv1.weight, ours.conv1.weight)


def test_brevitas_peer_is_4_bit_and_trains(twin):
    cfg = config("bits_list=[4]")
    stem_bits, fc_bits = peers.edge_bits(cfg, 10, 1)
    assert (stem_bits, fc_bits) == (4, 4)  # our ResNet-20 stem and classifier keep the top bit-width
    model = peers.brevitas_model(twin, 4, stem_bits, fc_bits).to(memory_format=torch.channels_last).train()
    conv = model.layers[0].conv1
    assert float(conv.quant_weight().bit_width) == 4
    assert len(torch.unique(conv.quant_weight().value)) <= 15  # narrow signed 4-bit: -7..7 times one scale
    assert model.conv1.input_quant.is_quant_enabled is False  # the images are never quantized, as in ours
    assert float(conv.input_quant.bit_width()) == 4 and float(model.fc.input_quant.bit_width()) == 4
    optimizer = adabits.engine.optim.build_optimizer(model, cfg)
    before = conv.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(images(8)), torch.arange(8) % 10)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(conv.weight, before)


def test_torch_ao_int8_model_agrees_with_fake_quant(twin):
    x = images(32)
    prepared = peers.torch_ao_prepare(twin, x)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for _ in range(2):  # observers see data, weights move
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(prepared(x), torch.arange(32) % 10).backward()
        optimizer.step()
    int8 = peers.torch_ao_convert(prepared)
    assert any("quantized" in type(m).__module__ for m in int8.modules())  # real int8 kernels
    with torch.no_grad():
        fake = prepared.eval()(x).argmax(1)
        real = int8(x).argmax(1)
    assert (fake == real).float().mean() >= 0.9


def test_bad_kind_and_bad_bits_are_clear_errors():
    with pytest.raises(ValueError, match="brevitas_w4a4, torch_ao_qat8"):
        peers.peer_row("brevitas_w8a8", config("bits_list=[8]"))
    with pytest.raises(ValueError, match=r"bits_list \[4\]"):
        peers.peer_row("brevitas_w4a4", config("bits_list=[8]"))
    with pytest.raises(ValueError, match="fp_pretrained_file"):
        peers.peer_row("torch_ao_qat8", config("bits_list=[8]", "fp_pretrained_file="))
