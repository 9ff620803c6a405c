"""adabits.runtime on every input: a file that is not a whole export is one ExportedFileError (never an abort of
the process), and images are either run or refused with one ModelInputError (never a silent wrong result)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _damage import damaged as damage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import adabits
from adabits.errors import ExportedFileError, ModelInputError
from adabits.runtime import ONNX_MANIFEST, load

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A small CNN for raw 0..255 pixels, trained a few steps, exported to a .pte (max batch 4) and to ONNX."""
    pytest.importorskip("executorch")
    pytest.importorskip("onnxruntime")
    from adabits.export.integer_graph import integer_graph
    from adabits.export.onnx_integer import write_onnx_folder
    from adabits.export.pte import export_pte

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    images = torch.randint(0, 256, (64, *SHAPE)).float()
    net(images)  # BN statistics of these images
    model = adabits.quantize_model(net.eval(), [8, 4], calibration=[images]).eval()
    graphs = [integer_graph(model, b, SHAPE, images, uint8_input=True) for b in (8, 4)]
    folder = tmp_path_factory.mktemp("exported")
    return {"pte": export_pte(graphs, folder / "model.pte", max_batch=4),
            "onnx": write_onnx_folder(graphs, folder / "onnx")}


def _load(exported: dict[str, Path], kind: str):
    """kind: "pte" (ExecuTorch), "onnx" (ONNX Runtime) or "openvino" (the ONNX folder in OpenVINO)."""
    if kind == "openvino":
        pytest.importorskip("openvino")
        return load(exported["onnx"], runtime="openvino")
    return load(exported[kind])


OPENVINO = pytest.param("openvino", marks=pytest.mark.openvino)  # in a process of its own (tests/conftest.py)
KINDS = ["pte", "onnx", OPENVINO]


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_above_the_planned_one_runs_in_chunks(exported, kind):
    model = _load(exported, kind)
    images = np.random.default_rng(0).integers(0, 256, (11, *SHAPE)).astype(np.float32)
    whole = model.run(images, bits=4)
    assert whole.shape == (11, 3)
    np.testing.assert_allclose(whole[8:], model.run(images[8:], bits=4), rtol=1e-5)


_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-1000, 1000).map(float),
    st.floats(0, 1, width=32),
)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_images_are_run_or_refused_with_one_error(exported, kind, data):
    model = _load(exported, kind)
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]))
    shape = data.draw(st.one_of(st.just((3, *SHAPE)), hnp.array_shapes(min_dims=1, max_dims=5, max_side=9)))
    elements = st.booleans() if dtype is np.bool_ else (st.integers(0, 255) if dtype is np.uint8 else
                                                        st.integers(-300, 600) if dtype is np.int64 else _VALUES)
    images = data.draw(hnp.arrays(dtype, shape, elements=elements))
    try:
        logits = model.run(images, bits=data.draw(st.sampled_from([8, 4])))
    except ModelInputError as error:
        assert "\n" not in str(error)
        return
    # what runs is a whole batch of raw pixels: whole numbers from 0 to 255, of the model's shape
    assert images.shape[1:] == SHAPE and len(images) >= 1 and dtype is not np.bool_
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255
    assert np.array_equal(images, np.round(images))
    assert logits.shape == (len(images), 3) and np.isfinite(logits).all()


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_bit_width_is_one_error(exported, kind):
    with pytest.raises(ModelInputError, match="not a bit-width"):
        _load(exported, kind).run(np.zeros((1, *SHAPE), np.float32), bits=5)


@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_damaged_pte_is_one_error_not_an_abort(exported, tmp_path, data):
    # a flip past the header reaches ExecuTorch's own parser, which may abort the process: flips stay in the header
    damaged = damage(exported["pte"].read_bytes(), data, flip_within=40)
    path = tmp_path / "damaged.pte"
    path.write_bytes(damaged)
    try:
        load(path)
    except ExportedFileError as error:
        assert "\n" not in str(error) and str(path) in str(error)
    else:  # a flipped bit of the root offset or a header length that still adds up may load: it must run
        load(path).run(np.zeros((1, *SHAPE), np.float32), bits=8)


_MANIFEST_DAMAGE = st.one_of(
    st.binary(max_size=64).map(lambda b: b),
    st.just(b"[]"),
    st.just(json.dumps({"files": {}, "input_shape": [1, 8, 8], "uint8_input": True}).encode()),
    st.just(json.dumps({"files": {"8": "../model_8bit.onnx"}, "input_shape": [1, 8, 8], "uint8_input": True}).encode()),
    st.just(json.dumps({"files": {"8": "model_8bit.onnx"}, "input_shape": [1, -8], "uint8_input": True}).encode()),
    st.just(json.dumps({"files": {"8": "missing.onnx"}, "input_shape": [1, 8, 8], "uint8_input": True}).encode()),
    st.just(json.dumps({"files": {"8": "model_8bit.onnx"}, "input_shape": [1, 8, 8], "uint8_input": "yes"}).encode()),
    st.just(json.dumps({"files": {"8": "model_8bit.onnx"}, "input_shape": [1, 8, 8], "uint8_input": True,
                        "accuracy_level": 3}).encode()),
)


@pytest.mark.parametrize("runtime", ["onnxruntime", OPENVINO])
@given(manifest=_MANIFEST_DAMAGE, model_bytes=st.one_of(st.none(), st.binary(max_size=256)))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_damaged_onnx_folder_is_one_error(exported, tmp_path, runtime, manifest, model_bytes):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    folder = tmp_path / "onnx"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(exported["onnx"], folder)
    if model_bytes is not None:  # the manifest intact, a model file replaced by other bytes
        (folder / "model_8bit.onnx").write_bytes(model_bytes)
    else:
        (folder / ONNX_MANIFEST).write_bytes(manifest)
    with pytest.raises(ExportedFileError) as error:
        load(folder, runtime=runtime)
    assert "\n" not in str(error.value)


def test_a_runtime_that_does_not_run_the_export_is_one_error(exported):
    with pytest.raises(ValueError, match="runtime must be one of executorch, onnxruntime, openvino; got 'tvm'"):
        load(exported["onnx"], runtime="tvm")
    with pytest.raises(ValueError, match="is an ExecuTorch program; runtime='openvino' runs ONNX folders"):
        load(exported["pte"], runtime="openvino")
    with pytest.raises(ValueError, match="is an ONNX folder; runtime='executorch' runs .pte files"):
        load(exported["onnx"], runtime="executorch")


def test_a_missing_or_foreign_path_is_one_error(tmp_path):
    for path in (tmp_path / "none.pte", tmp_path, tmp_path / "model.onnx"):
        with pytest.raises(ExportedFileError):
            load(path)


def test_a_loaded_pte_keeps_its_program_alive(exported, monkeypatch):
    """An ExecuTorch program frees its methods' memory when it is freed: a model whose program had gone would run
    its methods on freed memory (the full test suite crashed with a segmentation fault that way)."""
    import gc
    import weakref

    from executorch.runtime import Runtime

    programs = []
    original = Runtime.load_program

    def recorded(self, *args, **kwargs):
        program = original(self, *args, **kwargs)
        programs.append(weakref.ref(program))
        return program

    monkeypatch.setattr(Runtime, "load_program", recorded)
    model = load(exported["pte"])
    gc.collect()
    assert programs and all(ref() is not None for ref in programs)
    assert model.run(np.zeros((1, *SHAPE), np.float32), bits=8).shape == (1, 3)
