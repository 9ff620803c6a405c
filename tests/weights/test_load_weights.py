"""`adabits.load_weights`: the one pipeline (read -> clean -> remap -> adapt -> fit -> load) and its report."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adabits
from adabits.errors import CheckpointError
from adabits.weights import WeightsMismatch


def float_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def quantized(bits_list=(8, 4)) -> nn.Module:
    return adabits.quantize_model(float_net(), bits_list=list(bits_list))


@settings(max_examples=20, deadline=None)
@given(prefixes=st.lists(st.sampled_from(["module.", "_orig_mod."]), max_size=3),
       container=st.sampled_from(["plain", "model", "state_dict"]))
def test_any_wrapper_and_container_loads_the_same_weights(prefixes, container):
    """DataParallel / torch.compile prefixes, nested in any order, and the usual containers all load strictly."""
    source = quantized()
    state = {"".join(prefixes) + key: value for key, value in source.state_dict().items()}
    ckpt = state if container == "plain" else {container: state}
    target = quantized()
    report = adabits.load_weights(target, ckpt)
    assert report.complete and report.loaded == report.model_keys
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_a_float_model_fills_every_bit_width(tmp_path):
    float_model = float_net()
    float_model[1].running_mean.uniform_()
    torch.save(float_model.state_dict(), tmp_path / "float.pt")
    model = quantized((8, 6, 4))
    report = adabits.load_weights(model, tmp_path / "float.pt", from_float=True)
    assert str(report) == f"loaded full-precision weights from {tmp_path / 'float.pt'}"
    for copy in model[1].bn:
        assert torch.equal(copy.running_mean, float_model[1].running_mean)


def test_keys_that_collide_once_unwrapped_are_refused():
    state = quantized().state_dict()
    key = next(iter(state))
    with pytest.raises(CheckpointError, match=f"mine.pt: checkpoint keys collide .* become '{key}'"):
        adabits.load_weights(quantized(), {**state, f"module.{key}": state[key]}, name="mine.pt")


def test_a_misfit_names_keys_and_a_partial_load_reports_them():
    state = quantized().state_dict()
    weight = next(k for k in state if k.endswith("weight"))
    state[weight] = torch.zeros(1)
    with pytest.raises(WeightsMismatch, match=r"^the state dict does not fit model Sequential: 1 keys have other "
                                              r"shapes") as refused:
        adabits.load_weights(quantized(), state)
    assert refused.value.partial_possible and "\n" not in str(refused.value)
    report = adabits.load_weights(quantized(), state, partial=True)
    assert not report.complete and report.mismatched == [weight] and report.loaded == report.model_keys - 1
    assert "partial_load: " in str(report)


def test_a_file_of_no_tensors_is_one_line_naming_it(tmp_path):
    torch.save({"model": {"w": 1}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"x\.pt holds no model state dict"):
        adabits.load_weights(quantized(), tmp_path / "x.pt")
