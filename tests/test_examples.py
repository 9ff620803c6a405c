"""The examples run end to end: from a float model of one's own to a deployed file, in a plain PyTorch loop and
under PyTorch Lightning."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(autouse=True)
def _examples_import_each_other(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as when run as scripts from examples/


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_loop_trains_exports_and_switches(tmp_path):
    pytest.importorskip("executorch")
    result = _example("plain_loop").main(["--out", str(tmp_path), "--train-images", "4096", "--test-images", "1000",
                                          "--joint-steps", "10"])
    assert result["graph"] == "integer" and Path(result["exported"]).is_file()
    assert result["float_top1"] > 30  # one epoch on 4096 images: weak, but a trained model, not a random one
    for bits in (8, 6, 5, 4):  # usable at once at every bit-width, and still after the joint steps
        assert result["calibrated_top1"][bits] > result["float_top1"] - (1.0 if bits == 8 else 3.0), bits
        assert result["trained_top1"][bits] > result["float_top1"] - 3.0, bits
        assert result["runtime_agreement"][bits] >= 0.95, bits


def test_the_lightning_loop_trains_every_bit_width_with_lightnings_trainer(tmp_path):
    pytest.importorskip("executorch")
    pytest.importorskip("lightning")
    result = _example("lightning_loop").main(["--out", str(tmp_path), "--train-images", "4096", "--test-images",
                                              "1000", "--joint-steps", "10"])
    assert result["steps"] == 10  # Lightning's optimizer steps: one per joint step, not one per bit-width
    assert result["graph"] == "integer" and Path(result["exported"]).is_file()
    assert result["float_top1"] > 30
    for bits in (8, 6, 5, 4):  # the Trainer's 10 steps trained every bit-width: ~44% -> ~57% here (calibrated ~43%)
        assert result["trained_top1"][bits] > result["float_top1"] + 5.0, bits
        assert result["runtime_agreement"][bits] >= 0.95, bits
    assert result["runtime_bits"] == {8: 8, 6: 6, 5: 5, 4: 4}  # the file runs the bit-width each call asks for
    assert not any(tmp_path.glob("lightning_logs"))  # no logger, no checkpoints: the example writes only its file
