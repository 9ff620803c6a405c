"""benchmarks/train_speed.py: its steps run (the Trainer's own step for ours) and its ratios are the ones reported."""

import pytest
import torch

from benchmarks import train_speed


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ratios_against_full_precision_and_the_joint_goal():
    median = {"fp_eager": 1.0, "4bit_eager": 1.25, "joint_eager": 4.4, "fp_compiled": 0.8}
    ratios = train_speed.ratios(median)
    assert ratios["4bit_eager / fp_eager"] == 1.25
    assert ratios["joint_eager / (4 x fp_eager)"] == 1.1
    assert ratios["joint_eager / (4 x 4bit_eager)"] == 0.88
    assert "joint_compiled / (4 x fp_compiled)" not in ratios  # no joint_compiled measured


def test_joint_step_trains_every_bit_width_and_the_peer_steps():
    step, bit_widths = train_speed.trainer_step("joint", compiled=False, batch=8)
    assert bit_widths == 4
    step()
    train_speed.brevitas_step(compiled=False, batch=8)()
