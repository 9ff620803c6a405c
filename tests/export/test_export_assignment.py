"""A per-layer assignment exported by name: one more method in a `.pte` or ONNX folder, run by
`adabits.runtime` beside the uniform bit-widths (issue 30)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import adabits
from adabits.errors import BitWidthError, ExportedFileError, ExportError, ModelInputError
from adabits.quant.assignment import mean_weight_bits, quantized_layers
from adabits.quant.bitwidth import NamedAssignment, bits_text

SHAPE = (1, 16, 16)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(seed)).float()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A plain CNN converted at {8, 4} and calibrated; its first conv kept at 8 bits in the assignment."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return adabits.quantize_model(net, [8, 4], calibration=[_images(16, seed) for seed in range(2)]).eval()


def _assignment(model: nn.Module) -> dict[str, int]:
    first, second = list(quantized_layers(model))[:2]
    return {"*": 4, first: 8, second: 8}


def _logits(model: nn.Module, bits: object, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad(), adabits.use_bits(model, bits):
        return model(x).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
def test_an_assignment_is_one_more_method_and_runs_as_the_model_does(model, fmt, tmp_path) -> None:
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "executorch")
    from adabits.runtime import load, pick_bits

    assignment = _assignment(model)
    path = tmp_path / ("onnx" if fmt == "onnx" else "m.pte")
    done = adabits.export_model(model, path, format=fmt, example=_images(2), calibration=_images(64),
                                assignments={"front": assignment}, uint8_input=True)
    assert [bits_text(b, "config") for b in done.bits] == ["8", "4", "front"] and done.graph == "integer"
    runtime = load(done.path, threads=1) if fmt == "onnx" else load(done.path)
    assert runtime.bits_list == ["8", "4", "front"]
    x = _images(64, seed=7)
    outputs = {bits: runtime.run(x, bits=bits) for bits in runtime.bits_list}
    expected = _logits(model, assignment, x)
    agree = (outputs["front"].argmax(1) == expected.argmax(1)).mean()
    assert agree >= 0.9, agree
    # the mixed method is neither uniform one: its logits follow the mixed model more closely than either
    error = {bits: np.abs(out - expected).mean() for bits, out in outputs.items()}
    assert error["front"] < min(error["8"], error["4"]), error
    # bits per weight rank it between the uniform bit-widths, and pick_bits reads them
    means = {}
    for key, bits in (("8", 8), ("4", 4), ("front", assignment)):
        with adabits.use_bits(model, bits):
            means[key] = mean_weight_bits(model)  # the first layer stays at 8 bits (quantize_model's bitw_min)
    assert runtime.weight_bits == pytest.approx(means, abs=1e-4)
    assert means["8"] == 8 and means["4"] < means["front"] < 8
    latency = {"8": 3.0, "front": 2.0, "4": 1.0}
    assert pick_bits(latency, 2.5, weight_bits=runtime.weight_bits) == "front"
    assert pick_bits(latency, 1.5, weight_bits=runtime.weight_bits) == "4"
    with pytest.raises(ModelInputError, match="'front' is an exported assignment: pass weight_bits"):
        pick_bits(latency, 2.5)


def test_an_onnx_folder_records_the_assignment_file_and_its_weight_bits(model, tmp_path) -> None:
    pytest.importorskip("onnx")
    done = adabits.export_model(model, tmp_path / "onnx", format="onnx", bits=[], example=SHAPE,
                                calibration=_images(32), assignments={"front": _assignment(model)})
    manifest = json.loads((done.path / "adabits_onnx.json").read_text())
    assert manifest["files"] == {"front": "model_mixed_front.onnx"}
    assert set(manifest["weight_bits"]) == {"front"}
    pytest.importorskip("onnxruntime")
    from adabits.runtime import load

    for bad in ({"front": "6"}, {"other": 6.0}, {"front": True}, [6.0]):
        (done.path / "adabits_onnx.json").write_text(json.dumps({**manifest, "weight_bits": bad}))
        with pytest.raises(ExportedFileError, match="'weight_bits' maps the files' keys to numbers"):
            load(done.path)


def test_the_qdq_graph_of_an_assignment_is_the_models_arithmetic(model, tmp_path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from adabits.runtime import load

    assignment = _assignment(model)
    done = adabits.export_model(model, tmp_path / "onnx", format="onnx", bits=[4], example=SHAPE, graph="qdq",
                                assignments={"front": assignment})
    assert done.graph == "qdq"
    runtime = load(done.path, threads=1)
    x = _images(32, seed=3)
    np.testing.assert_allclose(runtime.run(x, bits="front"), _logits(model, assignment, x), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("assignments, error, message", [
    ({"1front": {"*": 4}}, BitWidthError, "an assignment's name is a letter"),
    ({"front": {"nothing.here": 4}}, BitWidthError, "'nothing.here' matches no quantized layer"),
    ({"front": {"*": 6}}, BitWidthError, "not trained or calibrated for bit-width 6"),
    ({"front": [("*", 4)]}, BitWidthError, r"expected \{layer or pattern: bits\}"),
])
def test_a_bad_assignment_is_one_line_before_anything_is_written(model, tmp_path, assignments, error, message) -> None:
    with pytest.raises(error, match=message):
        adabits.export_model(model, tmp_path / "m.onnx", format="onnx", example=SHAPE, assignments=assignments)
    assert not (tmp_path / "m.onnx").exists()


def test_nothing_to_export_is_refused(model, tmp_path) -> None:
    with pytest.raises(ExportError, match="nothing to export"):
        adabits.export_model(model, tmp_path / "m.onnx", format="onnx", bits=[], example=SHAPE)


def test_a_named_assignment_switches_the_model_like_its_layers() -> None:
    net = adabits.quantize_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), [8, 4])
    named = NamedAssignment("fast", {"*": 4, "0": 8})
    adabits.set_bits(net, named)
    assert adabits.get_bits(net) == {"0": 8, "2": 4}
    assert [bits_text(named, s) for s in ("config", "label", "tag", "words", "method")] == [
        "fast", "fast", "mixed_fast", "assignment fast", "forward_mixed_fast"]
