"""OpenVINO runs the ONNX export (`adabits.runtime.load(folder, runtime="openvino")`) and computes what ONNX Runtime
and the PyTorch model compute, on models trained in plain PyTorch on Fashion-MNIST and converted by adabits: a CNN
(the all-integer graph) and a small ViT (the quantize/dequantize graph, its linear layers MatMulNBits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _pretrained import fashion_mnist, trained_cnn, trained_vit

import adabits
from adabits.runtime import load

pytestmark = pytest.mark.openvino  # in a process of its own (tests/conftest.py)
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")
TRAIN, TEST = 5120, 1024


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    images, labels = fashion_mnist(TRAIN + TEST)
    return {"train": images[:TRAIN], "train_labels": labels[:TRAIN], "test": images[TRAIN:], "test_labels": labels[TRAIN:]}


@pytest.fixture(scope="module")
def vit(data):
    float_model = trained_vit(data["train"], data["train_labels"])
    with torch.no_grad():
        accuracy = float((float_model(data["test"]).argmax(1) == data["test_labels"]).float().mean())
    assert accuracy > 0.6  # it learned (10 classes)
    return adabits.quantize_model(float_model, [8, 4, 2], calibration=list(data["train"][:512].split(64))).eval()


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def _reference(model: torch.nn.Module, images: torch.Tensor, bits: int) -> np.ndarray:
    with torch.no_grad(), adabits.use_bits(model, bits):
        return model(images).numpy()


def test_the_vit_export_runs_in_openvino_as_the_model_computes(vit, data, tmp_path):
    """Accuracy level 0 (float32 compute, the default): OpenVINO and ONNX Runtime both agree with the model on
    every test image's class at every bit-width, and their logits nearly everywhere within float rounding."""
    from adabits.export.onnx_session import optimized_op_counts

    folder = adabits.export_model(vit, tmp_path / "vit", format="onnx", example=(1, 28, 28)).path
    assert optimized_op_counts(Path(folder) / "model_4bit.onnx")["MatMulNBits"] == 8  # the blocks' linears
    onnxruntime, openvino = load(folder), load(folder, runtime="openvino")
    for bits in (8, 4, 2):
        reference = _reference(vit, data["test"], bits)
        ours = {name: model.run(data["test"], bits=bits) for name, model in
                (("onnxruntime", onnxruntime), ("openvino", openvino))}
        for name, logits in ours.items():
            assert _top1_agreement(logits, reference) >= 0.995, (name, bits)
        # the runtimes sum in other orders, so an activation near a rounding boundary may land one code apart
        # (a move of about 0.01 in a logit); a wrong decoding moved them by up to 8
        close = np.abs(ours["openvino"] - ours["onnxruntime"]).max(axis=1) < 0.05
        assert close.mean() >= 0.99, (bits, close.mean())


def test_at_accuracy_level_4_openvino_quantizes_the_linear_inputs_as_onnx_runtime_does(vit, data, tmp_path):
    """Level 4 (int8 compute) is recorded in the folder and OpenVINO is told: both runtimes move a few images'
    classes away from the model's (measured 0.5-5 % on this ViT) and agree with each other on nearly all."""
    folder = adabits.export_model(vit, tmp_path / "vit", format="onnx", example=(1, 28, 28), accuracy_level=4).path
    onnxruntime, openvino = load(folder), load(folder, runtime="openvino")
    for bits in (8, 4, 2):
        reference = _reference(vit, data["test"], bits)
        ort_logits, ov_logits = onnxruntime.run(data["test"], bits=bits), openvino.run(data["test"], bits=bits)
        assert _top1_agreement(ort_logits, reference) >= 0.9 and _top1_agreement(ov_logits, reference) >= 0.9
        assert _top1_agreement(ov_logits, ort_logits) >= 0.97, bits


def test_the_cnn_integer_export_runs_in_openvino_as_in_onnx_runtime(data, tmp_path):
    """The all-integer graph (QLinearConv, integer residual grids) of a converted CNN: OpenVINO's class equals ONNX
    Runtime's on the test images at every bit-width."""
    float_model = trained_cnn(data["train"], data["train_labels"])
    calibration = data["train"][:256]
    model = adabits.quantize_model(float_model, [8, 4], calibration=list(calibration.split(64))).eval()
    done = adabits.export_model(model, tmp_path / "cnn", format="onnx", example=(1, 28, 28), calibration=calibration)
    assert done.graph == "integer"
    onnxruntime, openvino = load(done.path), load(done.path, runtime="openvino")
    for bits in (8, 4):
        ort_logits = onnxruntime.run(data["test"], bits=bits)
        assert _top1_agreement(openvino.run(data["test"], bits=bits), ort_logits) >= 0.995, bits
        assert _top1_agreement(ort_logits, _reference(model, data["test"], bits)) >= 0.95, bits
