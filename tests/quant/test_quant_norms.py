"""SwitchNorm: GroupNorm, BatchNorm1d (and LayerNorm, RMSNorm) one per bit-width under quantize_model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import adabits
from adabits.quant import SwitchNorm


class GroupNormCNN(nn.Module):
    """A conv net normalized with GroupNorm, then an MLP head with BatchNorm1d (the norms SwitchNorm covers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.group = nn.GroupNorm(2, 8)
        self.hidden = nn.Linear(8, 16)
        self.batch = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.group(self.conv(x))).mean((2, 3))
        return self.head(torch.relu(self.batch(self.hidden(x))))


def _float_model() -> nn.Module:
    torch.manual_seed(0)
    model = GroupNormCNN()
    with torch.no_grad():
        for norm in (model.group, model.batch):
            norm.weight.normal_()
            norm.bias.normal_()
        model.batch.running_mean.normal_()
        model.batch.running_var.uniform_(0.5, 2.0)
    return model


def test_groupnorm_and_batchnorm1d_become_one_per_bit_width_holding_the_float_state():
    float_model = _float_model()
    model = adabits.quantize_model(_float_model(), bits_list=[8, 4])
    assert isinstance(model.group, SwitchNorm) and isinstance(model.batch, SwitchNorm)
    assert [type(n) for n in model.batch.norms] == [nn.BatchNorm1d, nn.BatchNorm1d]
    for bits in (8, 4):
        adabits.set_bits(model, bits)
        for name in ("group", "batch"):
            for key, value in getattr(float_model, name).state_dict().items():
                torch.testing.assert_close(getattr(model, name).active.state_dict()[key], value)
    rows = {row.name: row for row in adabits.conversion_report(model).rows}
    assert rows["group"].kind == "SwitchNorm(GroupNorm)" and rows["batch"].kind == "SwitchNorm(BatchNorm1d)"
    assert rows["batch"].why == "normalization, one per bit-width: 8-bit, 4-bit"


def test_a_float_checkpoint_loads_into_every_copy():
    float_model = _float_model()
    model = adabits.quantize_model(GroupNormCNN(), bits_list=[8, 6, 4])
    missing, unexpected = adabits.load_fp_state_dict(model, float_model.state_dict())
    assert not unexpected and not [k for k in missing if "norms" in k]
    for index in range(3):
        torch.testing.assert_close(model.batch.norms[index].running_var, float_model.batch.running_var)
        torch.testing.assert_close(model.group.norms[index].weight, float_model.group.weight)


def test_each_bit_width_keeps_its_own_batchnorm1d_statistics_and_calibration_estimates_a_new_ones():
    model = adabits.quantize_model(_float_model(), bits_list=[8, 4]).train()
    x = torch.randn(32, 1, 6, 6)
    adabits.set_bits(model, 4)
    model(x)
    eight, four = model.batch.norms
    assert not torch.equal(eight.running_mean, four.running_mean)  # only the 4-bit copy saw the batch
    model.eval()
    with torch.no_grad():
        model.group.norms[1].weight.fill_(3.0)  # the 4-bit copy learned a gain of its own
    batches = [torch.randn(16, 1, 6, 6) for _ in range(3)]
    adabits.calibrate_bn(model, 5, batches, num_batches=3)
    new = model.batch.norms[2]
    assert int(new.num_batches_tracked) == 3  # fresh statistics, estimated on the three batches alone
    assert not torch.equal(new.running_mean, four.running_mean)
    torch.testing.assert_close(model.group.norms[2].weight, model.group.norms[1].weight)  # from the nearest: 4 bits


def test_a_norm_without_state_stays_float_and_switchbn_off_shares_one_copy():
    model = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8, affine=False), nn.BatchNorm1d(8, affine=False),
                          nn.Linear(8, 2))
    converted = adabits.quantize_model(model, bits_list=[8, 4])
    assert type(converted[1]) is nn.GroupNorm  # nothing a per-bit copy could differ in
    assert isinstance(converted[2], SwitchNorm)  # without affine, a BatchNorm1d still keeps running statistics
    shared = adabits.quantize_model(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)),
                                    bits_list=[8, 4], config=adabits.QuantConfig(switchbn=False))
    assert shared[1].shared and len(shared[1].norms) == 1
    adabits.calibrate_bn(shared.eval(), 5, [torch.randn(8, 4)], num_batches=1)
    assert len(shared[1].norms) == 1  # the shared copy serves the new bit-width as it is


def test_a_float_stage_checkpoint_loads_into_a_joint_model_with_shared_norms():
    """The float model (bits [32]) writes its one copy as norms.0; a switchbn=false joint model reads it."""
    float_model = adabits.quantize_model(_float_model(), bits_list=[32])
    joint = adabits.quantize_model(GroupNormCNN(), bits_list=[8, 4], config=adabits.QuantConfig(switchbn=False))
    missing, unexpected = adabits.load_fp_state_dict(joint, float_model.state_dict())
    assert not unexpected and not [k for k in missing if "norms" in k]
    torch.testing.assert_close(joint.batch.norms[0].running_var, float_model.batch.norms[0].running_var)


def test_switchnorm_names_what_it_takes():
    with pytest.raises(TypeError, match="BatchNorm2d has SwitchBatchNorm2d"):
        SwitchNorm(nn.BatchNorm2d(4), bits_list=[8])
