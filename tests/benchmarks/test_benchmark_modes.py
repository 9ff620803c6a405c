"""stage2_modes and vit_accuracy: the gaps they report, and the runner they share; engine/backends' CUDA switch."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from adabits.engine import backends
from benchmarks import common
from benchmarks.accuracy import vit_accuracy
from benchmarks.training import stage2_modes


def test_stage2_gaps_are_to_the_fp32_run_of_the_same_seed():
    runs = [{"mode": "fp32", "seed": 1, "top1": {"8": 91.0, "4": 90.0}},
            {"mode": "bf16", "seed": 1, "top1": {"8": 91.2, "4": 89.5}},
            {"mode": "fp32", "seed": 2, "top1": {"8": 90.0, "4": 89.0}},
            {"mode": "bf16", "seed": 2, "top1": {"8": 90.0, "4": 89.1}}]
    assert stage2_modes.gaps_to_fp32(runs) == {"bf16": {"1": {"8": 0.2, "4": -0.5}, "2": {"8": 0.0, "4": 0.1}}}


def test_vit_gaps_pair_the_joint_and_individual_rows_per_seed():
    rows = {"joint": {"8": 85.4, "6": 85.2, "5": 85.0, "4": 84.7},
            **{f"individual_{b}": {str(b): 85.0} for b in (8, 6, 5, 4)}}
    assert vit_accuracy.joint_minus_individual({"7": rows}) == {"8": {"7": 0.4}, "6": {"7": 0.2}, "5": {"7": 0.0},
                                                               "4": {"7": -0.3}}


def test_the_layernorm_ablation_pairs_the_two_joint_rows_per_seed():
    rows = {"joint": {"8": 85.4, "6": 85.2, "5": 85.0, "4": 84.7},
            "joint_shared_layernorm": {"8": 85.5, "6": 85.0, "5": 84.0, "4": 83.2}}
    assert vit_accuracy.switchable_minus_shared({"7": rows}) == {"8": {"7": -0.1}, "6": {"7": 0.2}, "5": {"7": 1.0},
                                                                "4": {"7": 1.5}}
    assert vit_accuracy.ROWS["joint_shared_layernorm"] == ["bits_list=[8,6,5,4]", "switchbn=false"]


def test_a_failed_run_stops_the_benchmark_naming_the_command_and_the_log(tmp_path: Path):
    log = tmp_path / "run.log"
    assert common.run_logged("x", [sys.executable, "-c", "print('hi')"], tmp_path, log) >= 0
    assert log.read_text() == "hi\n"
    with pytest.raises(SystemExit, match=r"benchmarks.x: .* failed with status 3; see .*run.log"):
        common.run_logged("x", [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path, log)


def test_cudnn_benchmark_follows_the_key_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    backends.configure(torch.device("cpu"), True)
    assert torch.backends.cudnn.benchmark is False
    backends.configure(torch.device("cuda"), True)  # sets the flag; no GPU is needed for that
    assert torch.backends.cudnn.benchmark is True
    backends.configure(torch.device("cuda"), False)
    assert torch.backends.cudnn.benchmark is False
