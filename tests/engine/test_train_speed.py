"""benchmarks/training/train_speed.py: its steps run (the Trainer's own step for ours) and its ratios are the ones reported."""

import pytest
import torch

from benchmarks.training import train_speed


def test_ratios_against_full_precision_and_the_joint_goal():
    median = {"fp_eager": 1.0, "4bit_eager": 1.25, "joint_eager": 4.4, "fp_compiled": 0.8}
    ratios = train_speed.ratios(median)
    assert ratios["4bit_eager / fp_eager"] == 1.25
    assert ratios["joint_eager / (4 x fp_eager)"] == 1.1
    assert ratios["joint_eager / (4 x 4bit_eager)"] == 0.88
    assert "joint_compiled / (4 x fp_compiled)" not in ratios  # no joint_compiled measured


def record_updates(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, bool, bool]]]:
    """Per SGD step (both variants use SGD), each parameter's (size, changed by the step, finite after it)."""
    updates: list[list[tuple[int, bool, bool]]] = []
    sgd_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        params = [p.detach() for group in self.param_groups for p in group["params"]]
        before = [p.clone() for p in params]
        result = sgd_step(self, *args, **kwargs)
        updates.append([(p.numel(), not torch.equal(p, b), bool(p.isfinite().all())) for p, b in zip(params, before)])
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step)  # before the schedulers wrap the optimizers' step
    return updates


def test_joint_step_trains_every_bit_width_and_the_peer_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    updates = record_updates(monkeypatch)
    step, bit_widths = train_speed.trainer_step("joint", compiled=False, batch=8)
    assert bit_widths == 4
    step()
    train_speed.brevitas_step(compiled=False, batch=8)()
    ours, peer = updates
    # Every parameter moved, each bit-width's own BN and clipping level too: all four bit-widths were trained.
    assert len(ours) > 100 and all(changed and finite for _, changed, finite in ours)
    # The peer's weights and BNs all moved (some of its scalar quantizer scales get no gradient at the start).
    assert all(changed and finite for size, changed, finite in peer if size > 1)
    assert all(finite for _, _, finite in peer)
