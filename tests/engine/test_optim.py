"""LR schedules against the original code's formulas, warmup, stepping, and the weight-decay rule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adabits.engine import TrainConfig
from adabits.engine.optim import OPTIMIZERS, build_optimizer, build_scheduler, decay_split
from adabits.engine.schedules import SCHEDULES, ScheduleSpec, multiplier

E = 10  # iterations per epoch
SPEC = ScheduleSpec(iters_per_epoch=E, num_epochs=20, warmup_epochs=2, warmup_start=0.25,
                    milestones=(8, 14), gamma=0.1, exp_gamma=0.9, exp_period=3)
W, N = 20, 200


@pytest.mark.parametrize("i", [W, 57, 100, 143, 199])
def test_iteration_schedules_follow_their_formulas(i):
    p = (i - W) / (N - W)
    assert multiplier("cos_annealing_iter", SPEC, i) == pytest.approx((1 + math.cos(math.pi * p)) / 2)
    assert multiplier("exp_decaying_iter", SPEC, i) == pytest.approx(math.exp(-8 * p))
    assert multiplier("multistep_iter", SPEC, i) == pytest.approx(0.1 ** sum(i / E >= m for m in (8, 14)))


@pytest.mark.parametrize("i", [W, 29, 57, 80, 139, 140, 199])
def test_epoch_schedules_change_only_at_epoch_boundaries(i):
    e = i // E
    q = (e - 2) / (20 - 2)
    assert multiplier("cos_annealing", SPEC, i) == pytest.approx((1 + math.cos(math.pi * q)) / 2)
    assert multiplier("linear_decaying", SPEC, i) == pytest.approx(1 - q)
    assert multiplier("multistep", SPEC, i) == pytest.approx(0.1 ** sum(e >= m for m in (8, 14)))
    assert multiplier("exp_decaying", SPEC, i) == pytest.approx(0.9 ** (e // 3))
    for name in ("cos_annealing", "linear_decaying", "multistep", "exp_decaying"):
        assert multiplier(name, SPEC, i) == multiplier(name, SPEC, e * E)


def test_multistep_drops_exactly_at_the_milestone_epoch():
    assert multiplier("multistep", SPEC, 8 * E - 1) == pytest.approx(1.0)
    assert multiplier("multistep", SPEC, 8 * E) == pytest.approx(0.1)
    assert multiplier("multistep", SPEC, 14 * E) == pytest.approx(0.01)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_linear_warmup_precedes_every_schedule(name):
    for i in (0, 5, 10, 19):
        assert multiplier(name, SPEC, i) == pytest.approx(0.25 + 0.75 * i / W)
    assert multiplier(name, SPEC, W) == pytest.approx(SCHEDULES[name](SPEC, W))


def test_linear_decaying_decays_once_and_stays_positive():
    no_warmup = ScheduleSpec(iters_per_epoch=E, num_epochs=4)
    values = [multiplier("linear_decaying", no_warmup, e * E) for e in range(4)]
    assert values == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_scheduler_steps_per_iteration_through_lambda_lr():
    model = nn.Linear(3, 2)
    cfg = TrainConfig(lr=0.2, lr_scheduler="cos_annealing_iter", num_epochs=2, warmup_epochs=0)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, iters_per_epoch=5)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.2 * (1 + math.cos(math.pi * i / 10)) / 2 for i in range(10)]
    assert seen == pytest.approx(expected)
    # the state restores into a fresh scheduler (resume)
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg, iters_per_epoch=5)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 10


def test_large_batch_warmup_starts_at_256_over_batch_size():
    model = nn.Linear(3, 2)
    cfg = TrainConfig(lr=1.0, batch_size=1024, lr_scheduler="constant", warmup_epochs=1, num_epochs=2)
    opt = build_optimizer(model, cfg)
    build_scheduler(opt, cfg, iters_per_epoch=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 8, 3)  # one input channel, but not depthwise
        self.dw = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.alpha = nn.Parameter(torch.tensor(8.0))
        self.fc = nn.Linear(4, 2)


def test_weight_decay_only_on_normal_conv_and_linear_weights():
    net = Net()
    decayed, rest = decay_split(net)
    assert {id(p) for p in decayed} == {id(net.first.weight), id(net.pw.weight), id(net.fc.weight)}
    assert {id(p) for p in rest} == {id(p) for p in (net.first.bias, net.dw.weight, net.pw.bias, net.bn.weight,
                                                     net.bn.bias, net.alpha, net.fc.bias)}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_with_the_decay_groups(name):
    net = Net()
    opt = build_optimizer(net, TrainConfig(optimizer=name, weight_decay=1e-3, lr=0.01))
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 1e-3]
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
