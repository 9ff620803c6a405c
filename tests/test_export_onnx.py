"""ONNX export: QDQ graphs that ONNX Runtime runs with integer kernels, matching the PyTorch model."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import adabits

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from adabits.export.onnx import ExportError, export_onnx, optimized_op_counts, run_onnx  # noqa: E402

INPUT = (1, 16, 16)


def calibrated(bits_list=(8, 6, 4), **options) -> torch.nn.Module:
    """A small ResNet whose per-bit BN statistics come from the data it is tested on."""
    torch.manual_seed(0)
    kwargs = {"weight_quant_scheme": "modified", "rescale_conv": True, **options}
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=list(bits_list), num_classes=10, in_chans=1,
                                 **kwargs)
    model.train()
    with torch.no_grad():
        for bits in bits_list:
            adabits.set_bits(model, bits)
            model(images(64, seed=1).float())
    adabits.set_bits(model, bits_list[0])
    return model.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *INPUT), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_integer_graph_runs_integer_kernels_and_follows_the_model(tmp_path, bits: int) -> None:
    model = calibrated()
    path = export_onnx(model, tmp_path / "m.onnx", bits, INPUT)
    ops = optimized_op_counts(path)
    # every conv whose output feeds only quantized layers becomes a QLinearConv (3 in a ResNet-8)
    assert ops["QLinearConv"] == 3, ops
    x = images(64, seed=2)
    with torch.no_grad(), adabits.use_bits(model, bits):
        expected = model(x).numpy()
    got = run_onnx(path, x)
    relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert relative < 0.05, relative
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    assert adabits.get_bits(model) == 8 and not model.training  # left as found


def test_float_export_is_plain_float_and_matches(tmp_path) -> None:
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[32], num_classes=10, in_chans=1,
                                 rescale_conv=True, pact_fp=True).eval()
    path = export_onnx(model, tmp_path / "fp.onnx", 32, INPUT)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"} and "Clip" in ops
    x = images(8).float()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bits_outside_the_model_or_the_int8_range_are_refused(tmp_path) -> None:
    model = calibrated()
    with pytest.raises(ValueError, match="allowed: 8, 6, 4"):
        export_onnx(model, tmp_path / "m.onnx", 5, INPUT)
    with pytest.raises(ExportError, match="bits <= 8"):
        export_onnx(model, tmp_path / "m.onnx", 16, INPUT)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("options, bits, fragment", [
    ({"act_quant_scheme": "modified"}, 4, "layer layers.0.conv1: act_quant_scheme 'modified'"),
    ({"double_side": True}, 4, "layer layers.0.conv1: double_side"),
])
def test_options_the_format_cannot_express_name_the_layer(tmp_path, options, bits, fragment) -> None:
    model = calibrated(**options)
    with pytest.raises(ExportError, match=fragment):
        export_onnx(model, tmp_path / "m.onnx", bits, INPUT)


def agreement_and_error(model, path, bits: int, x: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement of ONNX Runtime with the model, and the relative logit error."""
    with torch.no_grad(), adabits.use_bits(model, bits):
        expected = model(x).numpy()
    got = run_onnx(path, x)
    agree = (got.argmax(1) == expected.argmax(1)).mean()
    return float(agree), float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("scheme", ["centered", "original"])
def test_9_bit_weight_codes_run_as_exact_float_layers_with_a_warning(tmp_path, scheme: str) -> None:
    """`centered` / `original` codes need 9 bits at 8 bits: those layers run as float kernels, named."""
    model = calibrated(bits_list=(8, 4), weight_quant_scheme=scheme)
    with pytest.warns(UserWarning, match=r"3 layer\(s\) run as float kernels.*need 9 bits.*: layers.0.conv1, layers.1.conv1, "
                                         r"layers.2.conv1$"):
        path = export_onnx(model, tmp_path / "m.onnx", 8, INPUT)
    ops = optimized_op_counts(path)
    assert "QLinearConv" not in ops and "DequantizeLinear" not in ops, ops
    agree, error = agreement_and_error(model, path, 8, images(64, seed=3))
    assert agree == 1.0 and error < 0.01, (agree, error)  # a rare rounding tie breaks differently, no more
    # at 4 bits only the first and last layers (8-bit weights by policy) need 9 bits, and they are
    # float layers anyway (they feed a residual addition / the logits): no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = export_onnx(model, tmp_path / "m4.onnx", 4, INPUT)
    assert optimized_op_counts(path)["QLinearConv"] == 3


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_float_bias_export_runs_float_kernels_on_the_codes_and_follows_the_model(tmp_path, bits: int) -> None:
    model = calibrated()
    path = export_onnx(model, tmp_path / "m.onnx", bits, INPUT, bias="float")
    ops = optimized_op_counts(path)
    # no integer kernel, and no weight that ONNX Runtime could requantize (it would, behind a DequantizeLinear)
    assert not {"QLinearConv", "DequantizeLinear"} & set(ops) and ops["QuantizeLinear"] == 9, ops
    agree, error = agreement_and_error(model, path, bits, images(64, seed=2))
    assert agree == 1.0 and error < 0.01, (agree, error)  # a rare rounding tie breaks differently, no more


def test_centered_weights_export_where_they_fit_int8(tmp_path) -> None:
    """`centered` weights are odd integers up to 2^b - 1: 7-bit layers fit int8.

    (An untrained network amplifies the rare rounding ties that float and integer arithmetic
    break differently, hence the loose bound; the trained-model test below is the tight one.)"""
    model = calibrated(bits_list=(7, 4), weight_quant_scheme="centered")
    x = images(32, seed=3)
    for bits in (7, 4):
        path = export_onnx(model, tmp_path / "m.onnx", bits, INPUT)
        with torch.no_grad(), adabits.use_bits(model, bits):
            expected = model(x).numpy()
        got = run_onnx(path, x)
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.15
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory):
    """ResNet-8 trained jointly at [8, 6, 4] on Fashion-MNIST for 300 steps (`modified` weights)."""
    from adabits.data import DataError
    from adabits.engine import Trainer, build_config

    cfg = build_config({
        "model": "resnet_cifar", "depth": 8, "dataset": "fashion_mnist", "bits_list": [8, 6, 4],
        "weight_quant_scheme": "modified", "rescale_conv": True, "batch_size": 128, "lr": 0.05,
        "lr_scheduler": "cos_annealing_iter", "num_epochs": 1, "max_iters_per_epoch": 300,
        "crop_padding": 0, "eval_batch_size": 1000, "progress": False, "num_threads": 2,
        "log_dir": str(tmp_path_factory.mktemp("fashion")), "run_name": "r8",
    })
    try:
        trainer = Trainer(cfg, echo=lambda _m: None).prepare()
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    trainer.fit()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 6, 4])
def test_trained_model_top1_agreement_on_fashion_mnist(fashion_model, tmp_path, bits: int) -> None:
    model = fashion_model.model.eval()
    loader = fashion_model.loaders.val
    path = export_onnx(model, tmp_path / "m.onnx", bits, (1, 28, 28))
    agree = correct_torch = correct_onnx = total = 0
    worst = 0.0
    for x, labels in loader:
        with torch.no_grad(), adabits.use_bits(model, bits):
            expected = model(x).numpy()
        got = run_onnx(path, x.to(torch.uint8))
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        correct_torch += int((expected.argmax(1) == labels.numpy()).sum())
        correct_onnx += int((got.argmax(1) == labels.numpy()).sum())
        worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
        total += len(labels)
    assert total == 10_000
    assert correct_torch / total > 0.7  # the model did learn
    assert agree / total >= 0.995, (agree / total, correct_torch / total, correct_onnx / total)
    assert abs(correct_onnx - correct_torch) / total <= 0.005


def test_docs_snippet_runs_with_only_onnxruntime(tmp_path) -> None:
    """The snippet in docs/deploy.md, run where adabits cannot be imported, on an exported file."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    snippet = re.search(r"<!-- snippet:onnxruntime.*?-->\n```python\n(.*?)```", docs, re.S).group(1)
    assert "adabits" not in snippet and len(snippet.strip().splitlines()) <= 10
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=10, in_chans=1,
                                 weight_quant_scheme="modified").eval()
    export_onnx(model, tmp_path / "model_4bit.onnx", 4, (1, 28, 28))
    blocked = "import sys; sys.modules['adabits'] = None\n"  # importing adabits now fails
    proc = subprocess.run([sys.executable, "-I", "-c", blocked + snippet], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    predictions = proc.stdout.strip().strip("[]").split()
    assert len(predictions) == 8 and all(0 <= int(p) < 10 for p in predictions)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v1"])
def test_mobilenets_export_with_integer_kernels(tmp_path, name: str) -> None:
    torch.manual_seed(0)
    model = adabits.create_model(name, bits_list=[8, 4], num_classes=10, in_chans=3,
                                 weight_quant_scheme="modified").eval()
    path = export_onnx(model, tmp_path / "m.onnx", 4, (3, 32, 32))
    ops = optimized_op_counts(path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert ops["QLinearConv"] >= convs // 2, ops  # depthwise and pointwise convs run as integer kernels
    assert run_onnx(path, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 10)


def test_bias_modes_trade_one_quantize_per_layer_for_a_finer_grid(tmp_path) -> None:
    """int32_fine requantizes each integer layer's input codes (4 bits: x9); int32 does not."""
    import onnx

    model = calibrated()
    counts = {}
    for bias in ("int32_fine", "int32"):
        path = export_onnx(model, tmp_path / f"{bias}.onnx", 4, INPUT, bias=bias)
        counts[bias] = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
        assert optimized_op_counts(path)["QLinearConv"] == 3
        agree, error = agreement_and_error(model, path, 4, images(64, seed=2))
        assert agree >= 0.9 and error < 0.15, (bias, agree, error)
    assert counts["int32_fine"] == counts["int32"] + 3
    with pytest.raises(ExportError, match="bias must be one of int32_fine, int32, float; got 'int4'"):
        export_onnx(model, tmp_path / "m.onnx", 4, INPUT, bias="int4")


def test_int8_operands_are_exact_and_refine_the_bias_grid() -> None:
    """Codes x multiplier at scale / multiplier is the same weight; the int32 bias lands closer with
    the input factor; every product stays within the int16 pair limit."""
    from adabits.export.int8_layer import PAIR_PRODUCT_LIMIT, FoldedLayer, int8_operands

    rng = np.random.default_rng(0)
    codes = rng.choice(np.arange(-15, 16, 2), size=(32, 16, 3, 3))  # 4-bit centered codes
    folded = FoldedLayer(codes, rng.uniform(0.01, 0.1, 32), None, rng.normal(0, 1, 32))
    errors = {}
    for refine in (False, True):
        ops = int8_operands(folded, input_scale=0.3, levels=15, refine_input=refine)
        weight = ops.weight.astype(np.float64) * ops.weight_scale.reshape(-1, 1, 1, 1)
        np.testing.assert_allclose(weight, folded.float_weight(), rtol=1e-6)
        assert 15 * ops.input_factor * np.abs(ops.weight.astype(np.int32)).max() <= PAIR_PRODUCT_LIMIT
        np.testing.assert_allclose(ops.input_scale * ops.input_factor, np.float32(0.3), rtol=1e-6)
        errors[refine] = np.abs(ops.bias * ops.bias_scale.astype(np.float64) - folded.bias).mean()
    assert ops.input_factor == 9
    assert errors[True] < errors[False] / 4, errors
