"""`adabits.export_model`: any converted model, no registry name, through one table of op rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import adabits
from adabits.errors import ExportError
from adabits.export import load_packed
from adabits.export.op_rules import INTEGER_GRAPH_RULES, SOURCE_RULES

SHAPE = (1, 16, 16)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(seed)).float()


def _own(activation: nn.Module | None = None) -> nn.Module:
    """A plain PyTorch CNN (no registry name), converted and calibrated by `adabits.quantize_model`."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), activation or nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return adabits.quantize_model(net, [8, 4], calibration=[_images(16, seed) for seed in range(2)]).eval()


def test_the_call_is_export_model_and_the_subpackage_stays() -> None:
    """`adabits.export` is the subpackage (`from adabits.export import load_packed`); the call is `export_model`."""
    import adabits.export as subpackage

    assert adabits.export is subpackage and adabits.export.load_packed is load_packed
    assert adabits.export_model is subpackage.export_model and "export_model" in adabits.__all__


def test_every_rule_the_table_names_is_one_its_builder_has() -> None:
    from adabits.export.integer_graph import _Builder, integer_graph
    from adabits.export.onnx_integer import _Translator
    from adabits.export.qdq import QDQ_RULES
    from adabits.export.trace import trace_quantized

    model = _own()
    builder = _Builder(model, trace_quantized(model), False, ranges=None)
    assert set(builder.rules) == {rule.integer for rule in SOURCE_RULES if rule.integer}
    assert {rule.qdq for rule in SOURCE_RULES if rule.qdq} == set(QDQ_RULES)
    pytest.importorskip("onnx")
    translator = _Translator(integer_graph(model, 8, SHAPE, _images(8)))
    assert set(translator.rules) == set(INTEGER_GRAPH_RULES)


def test_a_model_of_ones_own_exports_all_integer_and_runs(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from adabits.runtime import load

    model = _own()
    done = adabits.export_model(model, tmp_path / "onnx", format="onnx", example=_images(2), calibration=_images(32),
                                uint8_input=True)
    assert done.graph == "integer" and done.bits == [8, 4] and "calibrated on 32 images" in done.how
    runtime = load(done.path, threads=1)
    assert runtime.bits_list == ["8", "4"] and runtime.input_shape == SHAPE
    x = _images(32, seed=5)
    for bits in (8, 4):
        with torch.no_grad(), adabits.use_bits(model, bits):
            expected = model(x).numpy()
        agree = (runtime.run(x, bits=bits).argmax(1) == expected.argmax(1)).mean()
        assert agree >= 0.9, (bits, agree)


def test_an_op_without_an_integer_rule_is_named_and_auto_writes_the_qdq_graph(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    from adabits.export.onnx_session import run_onnx

    model = _own(nn.GELU())
    with pytest.raises(ExportError, match=r"onnx export: module 2 \(GELU\) has no integer export rule"):
        adabits.export_model(model, tmp_path / "m.onnx", format="onnx", bits=4, example=SHAPE,
                             calibration=_images(8), graph="integer")
    done = adabits.export_model(model, tmp_path / "m.onnx", format="onnx", bits=4, example=SHAPE,
                                calibration=_images(8))
    assert done.graph == "qdq"
    assert done.how == ("quantize/dequantize graph traced by torch.export; the all-integer graph does not cover "
                        "this model (module 2 (GELU) has no integer export rule)")
    x = _images(8, seed=3)
    with torch.no_grad(), adabits.use_bits(model, 4):
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(done.path, x), expected, atol=1e-3 * np.abs(expected).max())


def test_example_is_a_batch_or_one_inputs_shape(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")

    model = _own()
    for given in ({"example": _images(2)}, {"example": SHAPE}, {"input_shape": list(SHAPE)}):  # the earlier name
        done = adabits.export_model(model, tmp_path / "m.onnx", format="onnx", bits=4, calibration=_images(8),
                                    **given)
        dims = onnx.load(str(done.path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims][1:] == list(SHAPE), given
    for given, message in [({}, "needs example="), ({"example": SHAPE, "input_shape": SHAPE}, "not both"),
                           ({"example": torch.zeros(16)}, r"a batch of inputs \(N, ...\)")]:
        with pytest.raises(ExportError, match=message):
            adabits.export_model(model, tmp_path / "x", format="onnx", **given)


@pytest.mark.parametrize("options, message", [
    ({"graph": "mixed"}, r"graph='mixed' was retired: use graph='integer' .* graph='qdq' .* bits=32"),
    ({"graph": "fused"}, "graph must be one of auto, integer, qdq; got 'fused'"),
    ({"format": "tflite"}, "unknown export format 'tflite'; allowed: pte, onnx, packed"),
    ({"bits": []}, "bits= is an empty list"),
    ({"graph": "integer"}, r"graph='integer' calibrates its 8-bit grids on images \(pass calibration=\)"),
])
def test_what_export_cannot_do_is_one_line(tmp_path, options, message) -> None:
    arguments = {"format": "onnx", "example": SHAPE, **options}
    with pytest.raises(ExportError, match=message) as caught:
        adabits.export_model(_own(), tmp_path / "m.onnx", **arguments)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "m.onnx").exists()
