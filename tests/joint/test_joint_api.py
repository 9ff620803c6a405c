"""adabits.joint_step, the joint step as one library call: its gradients are the per-bit losses' by hand, its
options order and teach as documented, and under DDP the gradients meet in one all-reduce per step."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _dist_helpers import CollectiveCounter, run_processes
from torch import nn

import adabits


def _model(bits=(8, 6, 4)) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    return adabits.quantize_model(net, list(bits), adabits.QuantConfig.pretrained())


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("joint_loss", ["mean", "sum"])
def test_the_gradients_are_those_of_the_per_bit_losses(joint_loss):
    model, by_hand = _model(), _model()
    images, labels = _batch()
    results = adabits.joint_step(model, images, labels, joint_loss=joint_loss)
    assert list(results) == [8, 6, 4]
    scale = 1 / 3 if joint_loss == "mean" else 1.0
    for bits in (8, 6, 4):
        adabits.set_bits(by_hand, bits)
        loss = F.cross_entropy(by_hand(images), labels)
        (loss * scale).backward()
        assert float(results[bits]) == pytest.approx(loss.item())
    for got, expected in zip(_grads(model), _grads(by_hand)):
        torch.testing.assert_close(got, expected)


def test_in_step_distillation_runs_highest_first_and_float_needs_its_logits():
    model = _model((4, 8, 6))
    images, labels = _batch()
    assert list(adabits.joint_step(model, images, labels, distill="recursive")) == [8, 6, 4]
    assert list(adabits.joint_step(model, images, labels, bits=[6, 4])) == [6, 4]
    with pytest.raises(ValueError, match="teacher_logits"):
        adabits.joint_step(model, images, labels, distill="float")
    with pytest.raises(ValueError, match="teacher_logits"):  # logits without distill='float' would teach silently
        adabits.joint_step(model, images, labels, teacher_logits=torch.zeros(8, 3))


def _ddp_rank(rank: int) -> dict:
    """One rank of a 2-process Gloo group: a joint step on this rank's half of the batch under DDP."""
    dist.init_process_group("gloo")
    hook_calls = []

    def counting(state, bucket):  # noqa: ANN001, ANN202 - a DDP communication hook
        hook_calls.append(1)
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    model = nn.parallel.DistributedDataParallel(_model())
    model.register_comm_hook(None, counting)
    counter = CollectiveCounter()
    images, labels = _batch()
    adabits.joint_step(model, images[rank * 4:(rank + 1) * 4], labels[rank * 4:(rank + 1) * 4])
    counter.restore()
    return {"hooks": len(hook_calls), "all_reduces": counter.calls, "grads": _grads(model.module)}


def test_under_ddp_the_gradients_meet_once_per_step(tmp_path):
    """DDP's own reducer never runs (every backward under no_sync); one all_reduce carries every bit-width's
    gradients, and each rank ends with the mean of the two processes' gradients."""
    results = run_processes(_ddp_rank, 2, tmp_path)
    assert all("error" not in r for r in results), results
    assert [r["hooks"] for r in results] == [0, 0] and [r["all_reduces"] for r in results] == [1, 1]
    images, labels = _batch()
    halves = []
    for rank in (0, 1):  # each half alone in one process (BN's batch statistics are per process under DDP too)
        alone = _model()
        adabits.joint_step(alone, images[rank * 4:(rank + 1) * 4], labels[rank * 4:(rank + 1) * 4])
        halves.append(_grads(alone))
    for rank in results:
        for got, first, second in zip(rank["grads"], *halves):
            torch.testing.assert_close(got, (first + second) / 2)
