"""Optimizers (a registry) with the original AdaBits code's weight-decay rule (docs/models.md), and the LR scheduler."""
from __future__ import annotations

from typing import Any, Callable, Protocol, cast

import torch
from torch import nn

from .schedules import ScheduleSpec, multiplier


def decay_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): decay only weights of non-depthwise convs and of linear layers.

    Depthwise means groups == in_channels > 1 (a module property: a first conv on grey images also
    has one input channel per filter, yet is a normal conv). BN, biases and PACT alphas are not decayed.
    """
    decayed: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            if not depthwise:
                decayed[id(module.weight)] = module.weight
        elif isinstance(module, nn.Linear):
            decayed[id(module.weight)] = module.weight
    rest = [p for p in model.parameters() if id(p) not in decayed]
    return [cast(nn.Parameter, p) for p in decayed.values()], rest


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decayed, rest = decay_split(model)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class OptimOptions(Protocol):
    """The typed view of a config that optimizers and schedules read (TrainConfig satisfies it)."""

    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    optim_decay: float
    optim_eps: float
    lr_scheduler: str
    batch_size: int
    num_epochs: int
    warmup_epochs: float
    warmup_start: float | None
    multistep_lr_milestones: list[float]
    multistep_lr_gamma: float
    exp_decaying_lr_gamma: float
    exp_decaying_period: int


OptimizerFactory = Callable[[list[dict[str, Any]], OptimOptions], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {}


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    def deco(fn: OptimizerFactory) -> OptimizerFactory:
        OPTIMIZERS[name] = fn
        return fn

    return deco


@register_optimizer("sgd")
def _sgd(groups: list[dict[str, Any]], cfg: OptimOptions) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@register_optimizer("rmsprop")
def _rmsprop(groups: list[dict[str, Any]], cfg: OptimOptions) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.optim_decay, eps=cfg.optim_eps, momentum=cfg.momentum)


@register_optimizer("adamw")
def _adamw(groups: list[dict[str, Any]], cfg: OptimOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.optim_eps)


def build_optimizer(model: nn.Module, cfg: OptimOptions) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg.weight_decay), cfg)


def schedule_spec(cfg: OptimOptions, iters_per_epoch: int) -> ScheduleSpec:
    warmup_start = cfg.warmup_start
    if warmup_start is None:
        warmup_start = 256 / cfg.batch_size if cfg.batch_size > 256 else 0.1
    return ScheduleSpec(
        iters_per_epoch=iters_per_epoch, num_epochs=cfg.num_epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_start=warmup_start, milestones=tuple(cfg.multistep_lr_milestones), gamma=cfg.multistep_lr_gamma,
        exp_gamma=cfg.exp_decaying_lr_gamma, exp_period=cfg.exp_decaying_period)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimOptions, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR to be stepped after every optimizer step (iteration i uses multiplier(i))."""
    spec = schedule_spec(cfg, iters_per_epoch)
    name = cfg.lr_scheduler

    def lr_lambda(i: int) -> float:  # a plain function: LambdaLR keeps it out of its state_dict
        return multiplier(name, spec, i)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
