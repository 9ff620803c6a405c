"""The trade-off of an exported model, measured on the file (`adabits.analysis.tradeoff`): a row per bit-width
whose top-1 is the exported file's own, on a CNN trained in plain PyTorch on Fashion-MNIST."""
from __future__ import annotations

import pytest
import torch
from _pretrained import fashion_mnist, trained_cnn

import adabits
from adabits.analysis.tradeoff import held_out_images, measure_tradeoff, plot_tradeoff

pytest.importorskip("onnxruntime")


def test_each_bit_width_reports_the_files_own_accuracy_latency_and_bits(tmp_path):
    images, labels = fashion_mnist(5120)
    model = adabits.quantize_model(trained_cnn(images, labels, width=32), [8, 4], calibration=list(images[:256].split(64)))
    folder = adabits.export_model(model.eval(), tmp_path / "onnx", format="onnx", example=(1, 28, 28),
                                  calibration=images[:256]).path
    test, test_labels = held_out_images(1000, uint8_input=False)
    rows = measure_tradeoff(folder, test, test_labels)
    assert [(r["runtime"], r["bits"]) for r in rows] == [("onnxruntime", "8"), ("onnxruntime", "4")]
    for row in rows:
        with torch.no_grad(), adabits.use_bits(model, int(row["bits"])):
            own = float((model(torch.from_numpy(test)).argmax(1).numpy() == test_labels).mean())
        assert row["top1"] > 0.4 and abs(row["top1"] - own) <= 0.01  # above chance (0.1); the file computes the model
        assert row["latency_ms"] > 0 and int(row["bits"]) <= row["weight_bits"] <= 8  # the first layer stays at 8
    plot_tradeoff(rows, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert rows[0]["weight_bits"] > rows[1]["weight_bits"]
