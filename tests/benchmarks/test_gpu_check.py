"""benchmarks/training/gpu_check.py, run CPU against CPU: its checks pass where nothing differs and fail where something does."""
from __future__ import annotations

import subprocess
import sys

import torch

from benchmarks.training import gpu_check

CPU = torch.device("cpu")


def test_a_code_one_step_away_is_counted_and_a_rounding_error_is_not():
    a = torch.arange(8.0) * 0.25
    b = a.clone()
    b[3] += 0.25  # one element one step (0.25) away
    b[5] += 1e-6  # a float rounding: the same code
    assert gpu_check.codes_differ(a, b, step=0.25) == 1 / 8
    assert gpu_check.relative_difference(a, a) == 0.0
    assert gpu_check.relative_difference(a, b) > 0.0


def test_the_same_device_passes_every_check():
    result = {
        "quantizers": gpu_check.check_activation_quantizers(CPU, (4,)) + gpu_check.check_weight_quantizers(CPU, (3,)),
        "models": gpu_check.check_models(CPU, ["resnet20"], [4]),
        "joint_step_host_reads": gpu_check.joint_step_host_reads(CPU),
    }
    # 3 schemes x 2 sides x 2 paths PACT rows, 3 schemes x (DoReFa, SAT) weight rows, bits 4 and float for the model
    assert len(result["quantizers"]) == 12 + 6 and [r["bits"] for r in result["models"]] == [4, 32]
    assert gpu_check.failures(result, 0.0, 0.0, 0.0) == []


def test_a_difference_beyond_tolerance_is_a_failure():
    result = {"quantizers": [{"quantizer": "pact", "bits": 4, "codes_differ": 0.01, "grad_x": 0.0}],
              "models": [{"model": "resnet20", "bits": 4, "layer_train": 0.0, "layer_eval": 0.5, "logits_eval": 9.0}],
              "joint_step_host_reads": ["item"]}
    lines = gpu_check.failures(result, code_tolerance=1e-3, model_tolerance=2e-2, grad_tolerance=1e-3)
    assert len(lines) == 3 and "item" in lines[2]
    assert gpu_check.failures(result | {"joint_step_host_reads": []}, 0.1, 1.0, 1e-3) == []


def test_an_unusable_device_is_one_line_and_status_2():
    done = subprocess.run([sys.executable, "-m", "benchmarks.training.gpu_check", "--device", "nosuchdevice"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--device nosuchdevice" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
