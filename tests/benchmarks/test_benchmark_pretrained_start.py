"""benchmarks/accuracy/pretrained_start.py: plain float models converted by adabits against PTQ peers, on a tiny setting."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.accuracy import plain_models, pretrained_start
from benchmarks.common import BadInput

ADABITS_ROWS = ("converted", "calibrated", "joint_steps")
PEER_ROWS = ("ort_int8", "executorch_int8", "brevitas_w8a8", "brevitas_w4a4", "torch_ao_int8")
TINY = ["--models", "cnn", "--train-images", "2048", "--epochs", "1", "--steps", "2", "--calibration-images", "64",
        "--test-images", "500"]


@pytest.mark.parametrize("model", [plain_models.PlainCNN, plain_models.PlainResNet20, plain_models.PlainViT])
def test_the_plain_models_classify_fashion_mnist_images(model: type[torch.nn.Module]) -> None:
    assert model()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_the_plain_models_owe_nothing_to_adabits() -> None:
    source = Path(plain_models.__file__).read_text()
    assert "import adabits" not in source and "from adabits" not in source


def test_the_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    assert plain_models.cosine_factor(0, 100, warmup=10) == pytest.approx(0.1)
    assert plain_models.cosine_factor(10, 100, warmup=10) == 1.0
    assert plain_models.cosine_factor(55, 100, warmup=10) == pytest.approx(0.5)
    assert plain_models.cosine_factor(100, 100) == 0.0


def test_unknown_models_are_refused_in_one_line() -> None:
    with pytest.raises(BadInput, match="allowed: cnn, resnet20, vit"):
        pretrained_start.parse_models("cnn,mlp")


def test_every_row_of_a_tiny_run_is_reported_with_its_gap_to_float(tmp_path: Path) -> None:
    out, cache = tmp_path / "result.json", tmp_path / "cache"
    returned = pretrained_start.main([*TINY, "--cache-dir", str(cache), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result == returned
    assert result["command"].startswith("python -m benchmarks.accuracy.pretrained_start --models cnn")
    assert result["machine"]["cores"] and result["settings"]["test_images"] == 500
    assert result["settings"]["train_images"] == 2048 and result["settings"]["calibration_images"] == 64
    bench = result["models"]["cnn"]
    rows = bench["rows"]
    assert list(rows) == ["float", *ADABITS_ROWS, *PEER_ROWS]
    float_top1 = rows["float"]["top1"]["float"]
    assert 10.0 < float_top1 <= 100.0  # one epoch on 2,048 images beats chance
    for key in ADABITS_ROWS:
        assert list(rows[key]["top1"]) == ["8", "6", "5", "4"], key
        assert rows[key]["seconds"] >= 0
    for key in PEER_ROWS:  # every peer library takes the plain CNN
        assert "error" not in rows[key], rows[key].get("error")
        assert list(rows[key]["top1"]) == [key[-1] if key.startswith("brevitas") else "8"]
    for key, row in rows.items():
        for bits, value in row["top1"].items():
            assert 0.0 <= value <= 100.0, (key, bits)
            assert row["gap_to_float"][bits] == pytest.approx(value - float_top1, abs=0.011)
    assert rows["calibrated"]["seconds"] > 0
    assert bench["float_training"]["steps"] == 16 and bench["float_training"]["cached"] is None
    assert (cache / "cnn_seed0.pt").is_file()
    assert "| adabits: converted, calibrated |" in out.with_suffix(".md").read_text()

    # the cached float model is reused only for the recipe and images it was trained with
    with pytest.raises(BadInput, match="delete it or pass another --cache-dir"):
        pretrained_start.main([*TINY[:2], "--train-images", "1024", *TINY[4:], "--cache-dir", str(cache)])
