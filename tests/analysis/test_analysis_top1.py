"""adabits.analysis.evaluation.top1: top-1 of any classifier over batches, at a chosen bit-width."""
import pytest
import torch
from torch import nn

import adabits
from adabits.analysis.evaluation import top1, top1_per_bits


class Echo(nn.Module):
    """The images are the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_top1_counts_every_batch():
    logits = torch.eye(4)  # predicts 0, 1, 2, 3
    batches = [(logits[:3], torch.tensor([0, 1, 0])), (logits[3:], torch.tensor([3]))]
    assert top1(Echo(), batches) == pytest.approx(75.0)


def test_top1_runs_in_eval_mode_at_the_bits_and_restores_both():
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 2], num_classes=10, in_chans=1)
    adabits.set_bits(model, 8)
    model.train()
    seen = []
    model.register_forward_pre_hook(lambda m, _x: seen.append((m.training, m.conv1.act_bits, m.layers[0].conv1.act_bits)))
    batches = [(torch.randint(0, 256, (4, 1, 28, 28)).float(), torch.arange(4))]
    value = top1(model, batches, bits=2)
    assert 0.0 <= value <= 100.0
    assert seen == [(False, 32, 2)]  # eval mode, 2 bits (the stem never quantizes the images)
    assert model.training and adabits.get_bits(model) == 8


def test_top1_per_bits_and_no_batches():
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=10, in_chans=1)
    batches = [(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))]
    result = top1_per_bits(model, batches, [8, 4])
    assert list(result) == [8, 4] and all(v in (0.0, 50.0, 100.0) for v in result.values())
    with pytest.raises(ValueError, match="no batches"):
        top1(Echo(), [])
