"""`adabits profile | calibrate | export` as a user runs them after training."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _engine_helpers import tiny_args

import adabits
from adabits.cli import main
from adabits.export import load_packed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (synthetic data, bits [8, 4]) trained once for every test here, with `modified` weights."""
    log_dir = tmp_path_factory.mktemp("runs")
    assert main(["train", *tiny_args(log_dir, num_epochs=1, weight_quant_scheme="modified")]) == 0
    return log_dir


def args(log_dir, *extra: str) -> list[str]:
    return [*tiny_args(log_dir, weight_quant_scheme="modified"), *extra]


def test_profile_prints_one_row_per_bit_width(trained, capsys) -> None:
    assert main(["profile", *args(trained)]) == 0
    out = capsys.readouterr().out
    assert "input 1x8x8" in out and "BitOPs" in out
    rows = [line.split("|")[0].strip() for line in out.splitlines() if "|" in line][1:]
    assert rows == ["8-bit", "4-bit"]
    assert main(["profile", *args(trained, "bits=4", "verbose=true")]) == 0
    assert "layers.0.conv1" in capsys.readouterr().out


def test_calibrate_then_test_and_export_the_new_bit_width(trained, capsys, tmp_path) -> None:
    target = tmp_path / "calibrated.pt"
    assert main(["calibrate", *args(trained, "bits=6", "num_batches=3", f"out={target}")]) == 0
    out = capsys.readouterr().out
    assert f"saved {target}" in out and "6-bit" in out and "8-bit" in out and "4-bit" in out
    ckpt = torch.load(target, weights_only=True)
    assert ckpt["bits_list"] == [8, 4, 6] and ckpt["calibrated_bits"] == [6] and "optimizer" not in ckpt
    # `adabits test` evaluates the calibrated bit-width too
    assert main(["test", *args(trained, f"pretrained_file={target}")]) == 0
    assert "6-bit" in capsys.readouterr().out
    packed = tmp_path / "model.safetensors"
    assert main(["export", "--format", "packed", *args(trained, f"pretrained_file={target}", f"out={packed}")]) == 0
    assert "packed / float32" in capsys.readouterr().out
    loaded = load_packed(packed)
    assert adabits.get_bits_list(loaded) == [8, 4, 6]
    onnx_path = tmp_path / "m.onnx"
    pytest.importorskip("onnxruntime")
    assert main(["export", "--format", "onnx", *args(trained, f"pretrained_file={target}", "bits=6",
                                                      f"out={onnx_path}")]) == 0
    assert onnx_path.is_file()


@pytest.mark.parametrize("extra, fragment", [
    (["calibrate"], "calibrate needs bits=B"),
    (["calibrate", "bits=8"], "bits=8 is already a bit-width of this model"),
    (["export", "--format", "onnx", "graph=mixed"], "graph=mixed was retired: use graph=integer"),
    (["export", "--format", "onnx", "graph=fused"], "graph must be one of integer, qdq; got 'fused'"),
    (["export", "--format", "onnx", "bits=8", "bias=float"], "bias= was retired with graph=mixed"),
    (["export", "--format", "packed", "bits=8"], "graph=, bits= and assignments= apply to --format onnx and pte"),
    (["export", "--format", "onnx", "assignments=front.json"], "assignments= takes @FILE[,@FILE...]"),
    (["export", "--format", "onnx", "assignments=@/nonexistent/front.json"], "/nonexistent/front.json: not a readable"),
    (["export", "--format", "pte", "calibration_images=0"], "calibration_images must be"),
    (["export", "--format", "onnx", "accuracy_level=2"], "accuracy_level must be one of 0, 4; got 2"),
    (["export", "--format", "packed", "accuracy_level=4"], "accuracy_level= applies to --format onnx and pte"),
    (["export", "--format", "onnx", "bits=5"], "bits=5 is not a bit-width of this model; allowed: [8, 4]"),
    (["profile", "bits=3"], "bits=3 is not a bit-width of this model"),
])
def test_bad_deploy_arguments_exit_2(trained, capsys, extra, fragment) -> None:
    command, *rest = extra
    assert main([command, *args(trained, *rest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err


def test_onnx_export_names_the_layers_it_cannot_express(trained, capsys, tmp_path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    log_dir = tmp_path / "centered"
    assert main(["train", *tiny_args(log_dir, num_epochs=1)]) == 0  # the tiny config's `centered` weights
    capsys.readouterr()
    # 9-bit weight codes: the all-integer graph requantizes them to int8 (the first layer's stay exact) and the
    # quantize/dequantize graph keeps them as exact float weights, each named in a note
    assert main(["export", "--format", "onnx", *tiny_args(log_dir), "bits=8", "calibration_images=16"]) == 0
    out = capsys.readouterr().out
    assert "(8 bits): all-integer" in out
    assert "note: at 8-bit, the 9-bit weight codes of layers.0.conv1, " in out and "were requantized to int8" in out
    assert main(["export", "--format", "onnx", *tiny_args(log_dir), "graph=qdq", "bits=8",
                 f"out={tmp_path / 'qdq8.onnx'}"]) == 0
    out = capsys.readouterr().out
    assert "(8 bits): quantize/dequantize graph" in out and "note: at 8-bit, the 9-bit weight codes of " in out
    assert "layers.0.conv1" in out and "stay exact float weights" in out
    # what neither graph can express is an error naming the layer
    log_dir = tmp_path / "act_modified"
    assert main(["train", *tiny_args(log_dir, num_epochs=1, act_quant_scheme="modified")]) == 0
    capsys.readouterr()
    assert main(["export", "--format", "onnx", *tiny_args(log_dir, act_quant_scheme="modified"), "bits=4"]) == 2
    assert "layer layers.0.conv1: act_quant_scheme 'modified' cannot be exported" in capsys.readouterr().err
    # the retired graph form and its bias modes are one line each, saying what to use instead
    assert main(["export", "--format", "onnx", *tiny_args(log_dir), "graph=mixed", "bits=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "graph=mixed was retired" in err and "graph=qdq" in err and "bits=32" in err
    for bias in ("int16", "int32_fine", "float"):
        assert main(["export", "--format", "onnx", *tiny_args(log_dir), "bits=4", f"bias={bias}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bias= was retired with graph=mixed" in err and "graph=qdq" in err
    assert main(["export", "--format", "packed", *tiny_args(log_dir), "bias=float"]) == 2
    assert "bias= was retired with graph=mixed" in capsys.readouterr().err


def test_float_model_exports_the_float_graph(capsys, tmp_path) -> None:
    """bits=32 (what graph=mixed was kept for): the float model as ONNX, reading no calibration images."""
    pytest.importorskip("onnxscript")
    log_dir = tmp_path / "float"
    assert main(["train", *tiny_args(log_dir, num_epochs=1, bits_list=[32])]) == 0
    capsys.readouterr()
    target = tmp_path / "fp.onnx"
    assert main(["export", "--format", "onnx", *tiny_args(log_dir, bits_list=[32]), "bits=32", f"out={target}"]) == 0
    assert "(32 bits): the float graph traced by torch.export" in capsys.readouterr().out
    from adabits.engine import load_config, load_trained
    from adabits.export.onnx_session import run_onnx

    model = load_trained(load_config(tiny_args(log_dir, bits_list=[32]), require_app=False).config).model
    images = torch.randint(0, 256, (4, 1, 8, 8)).float()
    with torch.no_grad():
        expected = model(images).numpy()
    torch.testing.assert_close(torch.from_numpy(run_onnx(target, images)), torch.from_numpy(expected),
                               atol=1e-4, rtol=1e-4)


def test_pte_and_onnx_exports_run_every_bit_width_in_their_runtimes(trained, capsys, tmp_path) -> None:
    """One .pte (a method per bit-width) and an ONNX folder, loaded by adabits.runtime, compute what
    the integer graph of each bit-width computes, and follow the fake-quant model."""
    pytest.importorskip("executorch")
    pytest.importorskip("onnxruntime")
    from adabits.engine import load_config, load_trained
    from adabits.runtime import load, pick_bits

    pte = tmp_path / "model.pte"
    assert main(["export", "--format", "pte", *args(trained, f"out={pte}", "calibration_images=64")]) == 0
    out = capsys.readouterr().out
    assert "methods forward_8, forward_4" in out and "calibrated on 64 training images" in out
    folder = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", *args(trained, f"out={folder}", "calibration_images=64")]) == 0
    assert "all-integer" in capsys.readouterr().out
    model = load_trained(load_config(args(trained), require_app=False).config).model
    images = torch.randint(0, 256, (64, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    for runtime in (load(pte), load(folder, threads=1)):
        assert runtime.bits_list == ["8", "4"] and runtime.input_shape == (1, 8, 8) and runtime.uint8_input
        for bits in (8, 4):
            with adabits.use_bits(model, bits), torch.no_grad():
                expected = model(images)
            got = torch.from_numpy(runtime.run(images, bits=bits))
            # an untrained tiny net on noise has near-tied logits: the export's bias grid tips a few
            agree = (got.argmax(1) == expected.argmax(1)).float().mean()
            assert agree >= 0.85, (runtime.source, bits, agree)
        with pytest.raises(ValueError, match="bits=6 is not a bit-width"):
            runtime.run(images, bits=6)
        latency = runtime.measure_latency(batch=2, repeats=2)
        assert set(latency) == {"8", "4"} and all(ms > 0 for ms in latency.values())
        assert pick_bits(latency, budget_ms=max(latency.values())) == "8"
        assert pick_bits(latency, budget_ms=0.0) is None
    # the example that serves each request at the bit-width its latency budget allows
    import importlib.util

    spec = importlib.util.spec_from_file_location("latency_budget", ROOT / "examples" / "latency_budget.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    served = example.serve(str(pte), [0.0, 1e6])
    assert served[0][1] in ("8", "4") and served[1][1] == "8"  # nothing fits: the fastest; everything fits: 8 bits


def test_export_writes_a_searched_assignment_as_one_more_method(trained, capsys, tmp_path) -> None:
    """`assignments=@FILE` (the file `adabits search` writes) adds a method named by the file, which the
    runtime runs beside the uniform bit-widths."""
    pytest.importorskip("onnxruntime")
    from adabits.engine import load_config, load_trained
    from adabits.quant.assignment import quantized_layers, write_assignment
    from adabits.runtime import load

    model = load_trained(load_config(args(trained), require_app=False).config).model
    second = list(quantized_layers(model))[1]
    chosen = write_assignment(tmp_path / "front-3.json", {"*": 4, second: 8})
    folder = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", *args(trained, f"out={folder}", f"assignments=@{chosen}",
                                                      "calibration_images=64")]) == 0
    assert "assignment front_3" in capsys.readouterr().out
    runtime = load(folder, threads=1)
    assert runtime.bits_list == ["8", "4", "front_3"] and 4 < runtime.weight_bits["front_3"] < 8
    images = torch.randint(0, 256, (32, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float()
    with adabits.use_bits(model, {"*": 4, second: 8}), torch.no_grad():
        expected = model(images).argmax(1).numpy()
    assert (runtime.run(images, bits="front_3").argmax(1) == expected).mean() >= 0.85
