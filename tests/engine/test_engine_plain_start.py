"""fp_pretrained_file with fp_pretrained_format: plain: an ordinary PyTorch model's state dict starts the run, the
float network computes what that model computed, and the AdaBits stage starts from its calibrated conversion."""
from __future__ import annotations

import pytest
import torch
from _engine_helpers import tiny_config

import adabits
from adabits.engine import ConfigError, Trainer
from adabits.engine.config import PLAIN_START
from adabits.quant.float_twin import float_twin


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    """A plain float network (nn.Conv2d, nn.BatchNorm2d, nn.Linear) of the ResNet layout, trained in plain PyTorch
    on the tiny runs' own training data, saved as a state dict."""
    torch.manual_seed(0)
    built = adabits.create_model("resnet_cifar", depth=8, bits_list=[32], num_classes=4, in_chans=1, clamp=False,
                                 rescale=False)
    plain = float_twin(built)
    assert not any(isinstance(m, adabits.QuantLayer) for m in plain.modules())
    folder = tmp_path_factory.mktemp("plain")
    loader = Trainer(tiny_config(folder, bits_list=[32]), echo=quiet).prepare().loaders.train
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.02, momentum=0.9)
    for _ in range(4):
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(plain(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.save(plain.state_dict(), folder / "plain.pt")
    return str(folder / "plain.pt"), plain.eval()


def test_the_float_network_computes_what_the_plain_model_computed(tmp_path, plain_file):
    path, plain = plain_file
    trainer = Trainer(tiny_config(tmp_path, bits_list=[32], fp_pretrained_file=path, fp_pretrained_format="plain"),
                      echo=quiet).prepare()
    images = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.eval()(images), plain(images), rtol=1e-5, atol=1e-5)


def test_the_adabits_stage_starts_from_the_calibrated_conversion(tmp_path, plain_file):
    path, plain = plain_file
    said: list[str] = []
    trainer = Trainer(tiny_config(tmp_path, bits_list=[8, 4], fp_pretrained_file=path, fp_pretrained_format="plain",
                                  num_epochs=1), echo=said.append).prepare()
    cfg = trainer.cfg
    assert all(getattr(cfg, key) == value for key, value in PLAIN_START.items())
    assert any("calibrated on" in line for line in said)
    images = next(iter(trainer.loaders.val))[0]
    model = trainer.model.eval()
    with torch.no_grad():
        expected = plain(images)
        drift = {bits: ((model(images) - expected).norm() / expected.norm()).item()
                 for bits in (8, 4) if not adabits.set_bits(model, bits)}
    assert drift[8] < 0.05 and drift[4] < 0.3, drift
    trainer.fit()


@pytest.mark.parametrize("key", ["clamp", "rescale"])
def test_a_plain_start_refuses_the_sat_transform_by_name(tmp_path, key):
    with pytest.raises(ConfigError, match=f"{key}: true would change"):
        tiny_config(tmp_path, fp_pretrained_file="x.pt", fp_pretrained_format="plain", **{key: True})


def test_a_plain_start_needs_its_file(tmp_path):
    with pytest.raises(ConfigError, match="fp_pretrained_format: plain describes the file"):
        tiny_config(tmp_path, fp_pretrained_format="plain")
