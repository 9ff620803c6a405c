"""The examples run end to end: a plain PyTorch loop from a float model of one's own to a deployed file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


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
