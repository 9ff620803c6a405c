"""Checkpoints of the original AdaBits code and of other models, loaded as fp_pretrained_file (a float
start spread into every bit-width) and as pretrained_file (strict): what loads, and the one-line
refusal for what does not fit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _original_layouts import original_mobilenet_layout, original_resnet_cifar_layout, random_state_dict
from torch import nn

import adabits
from adabits import QConv2d
from adabits.cli import main
from adabits.engine import build_config
from adabits.engine.build import build_model, load_pretrained
from adabits.errors import CheckpointError


def save_original(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """As the original's train.py saved it: {'model': state dict of a DataParallel model}."""
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    return path


def load(path: Path, kind: str = "fp_pretrained_file", **config) -> tuple[nn.Module, list[str]]:
    """A model of `config` (resnet20, 10 classes) given `path` the way `train` loads its start."""
    cfg = build_config({"model": "resnet20", "num_classes": 10, "dataset": "synthetic", kind: str(path), **config})
    model = build_model(cfg, 10, 3)
    return model, load_pretrained(model, cfg)


def modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


# ------------------------------------------------------------------ the original's clipping levels
def test_a_0_d_alpha_loads_into_a_shared_alpha() -> None:
    layer = QConv2d(3, 4, 3, bias=False, bits_list=[8, 4], config=adabits.QuantConfig(switch_alpha=False))
    layer.load_state_dict({"weight": torch.zeros(4, 3, 3, 3), "alpha": torch.tensor(3.0)})
    assert layer.alpha.shape == (1,) and layer.alpha.item() == 3.0


@pytest.mark.parametrize("switch_alpha", [False, True])
def test_original_resnet_with_0_d_alphas_is_a_float_start(switch_alpha: bool, tmp_path: Path) -> None:
    sd = random_state_dict(original_resnet_cifar_layout(alpha=()))
    model, notes = load(save_original(sd, tmp_path / "orig.pt"), bits_list=[8, 4], switch_alpha=switch_alpha)
    assert notes == [f"loaded full-precision weights from {tmp_path / 'orig.pt'}"]
    conv = modules(model)["layers.4.conv2"]  # stage 1, layer 1: 3 blocks per stage
    assert torch.equal(conv.weight, sd["stage_1_layer_1.body.3.weight"])
    assert torch.equal(conv.alpha, sd["stage_1_layer_1.body.3.alpha"].expand(2 if switch_alpha else 1))
    shortcut = modules(model)["layers.6.shortcut.1"]
    for index in range(2):
        assert torch.equal(shortcut.bn[index].running_var, sd["stage_2_layer_0.shortcut.1.bn.0.running_var"])
    assert torch.equal(model.fc.weight, sd["classifier.0.weight"]) and torch.equal(model.conv1.weight, sd["head.0.weight"])


def test_original_switchable_resnet_is_a_strict_pretrained_file(tmp_path: Path) -> None:
    sd = random_state_dict(original_resnet_cifar_layout(bits=4, alpha=(4,)))
    model, notes = load(save_original(sd, tmp_path / "orig.pt"), "pretrained_file", bits_list=[8, 6, 5, 4])
    assert notes == [f"loaded weights from {tmp_path / 'orig.pt'}"]
    bn = modules(model)["layers.8.bn2"]
    for index in range(4):
        assert torch.equal(bn.bn[index].weight, sd[f"stage_2_layer_2.body.4.bn.{index}.weight"])
    assert torch.equal(model.fc.alpha, sd["classifier.0.alpha"])


def test_original_stats_sharing_resnet_loads_its_shared_gamma_beta(tmp_path: Path) -> None:
    sd = random_state_dict(original_resnet_cifar_layout(bits=2, alpha=(2,), stats_sharing=True))
    model, _ = load(save_original(sd, tmp_path / "orig.pt"), "pretrained_file", bits_list=[8, 4], stats_sharing=True)
    bn = model.bn1
    assert torch.equal(bn.bn[1].weight, sd["head.1.weight"])
    assert torch.equal(bn.bn[1].running_mean, sd["head.1.bn.1.running_mean"])


@pytest.mark.parametrize("version,first_bn", [(1, "features.1.1"), (2, "features.1.conv.0.1")])
def test_original_switchable_mobilenet_is_a_strict_pretrained_file(version: int, first_bn: str, tmp_path: Path) -> None:
    """`adabits test` of the original's released models: the unused alpha of the first conv is dropped."""
    sd = random_state_dict(original_mobilenet_layout(version, bits=4, alpha=(4,)))
    path = save_original(sd, tmp_path / "orig.pt")
    model = adabits.create_model(f"mobilenet_v{version}", bits_list=[8, 6, 5, 4], num_classes=10)
    assert str(adabits.load_weights(model, path)) == f"loaded weights from {path}"
    assert torch.equal(modules(model)[first_bn].bn[3].running_mean, sd["stage_0_layer_0.body.1.bn.3.running_mean"])


def test_adabits_test_evaluates_an_original_checkpoint(tmp_path: Path, capsys) -> None:
    sd = random_state_dict(original_resnet_cifar_layout(bits=2, alpha=(2,)))
    path = save_original(sd, tmp_path / "orig.pt")
    args = ["model=resnet20", "dataset=synthetic", "num_classes=10", "in_chans=3", "image_size=8", "bits_list=[8,4]",
            "synthetic_val_size=8", "batch_size=8", f"log_dir={tmp_path}", "progress=false"]
    assert main(["test", *args, f"pretrained_file={path}"]) == 0
    assert f"loaded weights from {path}" in capsys.readouterr().out
    wrong = save_original(random_state_dict(original_resnet_cifar_layout(depth=32, bits=2, alpha=(2,))), tmp_path / "r32.pt")
    assert main(["test", *args, f"pretrained_file={wrong}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depth 32 (this model has depth 20)" in err
    assert "partial_load" not in err  # deploy commands load strictly; only train offers a partial load


# ------------------------------------------------------------------ what does not fit
def test_an_unrelated_checkpoint_shares_no_names(tmp_path: Path) -> None:
    torch.save(adabits.create_model("mobilenet_v2", bits_list=[32], num_classes=10).state_dict(), tmp_path / "mb.pt")
    for kind in ("fp_pretrained_file", "pretrained_file"):
        for partial in (False, True):
            with pytest.raises(CheckpointError, match=r"mb.pt shares no parameter names with model CifarResNet$"):
                load(tmp_path / "mb.pt", kind, bits_list=[8, 4], partial_load=partial)


@pytest.mark.parametrize("kind", ["fp_pretrained_file", "pretrained_file"])
def test_a_deeper_resnet_names_the_shapes_and_its_depth(kind: str, tmp_path: Path) -> None:
    torch.save(adabits.create_model("resnet32", bits_list=[32]).state_dict(), tmp_path / "r32.pt")
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "r32.pt", kind, bits_list=[32])
    message = str(info.value)
    assert "\n" not in message
    assert "layers.3.conv1.weight: checkpoint [16,16,3,3], model [32,16,3,3]" in message
    assert "12 model keys get no value (layers.3.shortcut.0.weight" in message
    assert "98 checkpoint keys are not in the model (layers.5.shortcut.0.weight" in message
    assert "looks written for depth 32 (this model has depth 20)" in message and "partial_load: true" in message


def test_a_shallower_resnet_leaves_model_keys_without_a_value(tmp_path: Path) -> None:
    torch.save({"model": adabits.create_model("resnet20", bits_list=[32]).state_dict()}, tmp_path / "r20.pt")
    with pytest.raises(CheckpointError, match=r"140 model keys get no value .*looks written for depth 20 \(this model has depth 32\)"):
        load(tmp_path / "r20.pt", model="resnet32", bits_list=[8, 4])


def test_partial_load_loads_what_fits_and_says_how_much(tmp_path: Path) -> None:
    """Fine-tuning on other classes: the classifier keeps its init, the rest loads."""
    source = adabits.create_model("resnet20", bits_list=[32], num_classes=100)
    torch.save(source.state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \[100,64\], model \[10,64\]"):
        load(tmp_path / "c100.pt", bits_list=[8, 4])
    model, notes = load(tmp_path / "c100.pt", bits_list=[8, 4], partial_load=True)
    assert notes[0].endswith("(partial_load: 252 of 254 model keys loaded; 0 got no value, 2 with other shapes "
                             "and 0 unknown checkpoint keys skipped)")
    assert torch.equal(model.layers[8].conv2.weight, source.layers[8].conv2.weight)
    assert not torch.equal(model.fc.weight, source.fc.weight[:10])


def test_a_float_start_of_another_bit_count_is_refused(tmp_path: Path) -> None:
    """An [8, 4] checkpoint has two per-bit BNs: nothing to spread into four."""
    two = adabits.create_model("resnet20", bits_list=[8, 4])
    torch.save({"model": two.state_dict()}, tmp_path / "84.pt")
    with pytest.raises(CheckpointError, match=r"84.pt holds 2 per-bit norms per layer .* this model has 4 "
                                              r"\(bits_list \[8, 6, 5, 4\]\); .*pretrained_file .*`adabits calibrate`"):
        load(tmp_path / "84.pt", bits_list=[8, 6, 5, 4])
    with pytest.raises(CheckpointError, match=r"model keys get no value \(bn1.bn.2.weight.*a bits_list of 2 bit-widths "
                                              r"\(this model has 4\)"):
        load(tmp_path / "84.pt", "pretrained_file", bits_list=[8, 6, 5, 4])


def test_our_checkpoint_names_the_model_and_bits_list_it_was_written_for(tmp_path: Path) -> None:
    two = adabits.create_model("resnet20", bits_list=[8, 4])
    torch.save({"format": "adabits-checkpoint-v1", "model_name": "resnet20", "bits_list": [8, 4],
                "model": two.state_dict()}, tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match=r"looks written for model resnet20 with bits_list \[8, 4\]"):
        load(tmp_path / "run.pt", "pretrained_file", bits_list=[8, 6, 5, 4])
