"""benchmarks/deploy/runtime_peers.py: the ONNX Runtime and ExecuTorch (XNNPACK) peers of a float model, float32 and int8."""
from pathlib import Path

import executorch  # noqa: F401  (CI installs the dev extra: a missing runtime fails here, it is never skipped)
import onnxruntime  # noqa: F401
import pytest
import torch
from torch import nn

import adabits
from adabits.export.onnx_session import optimized_op_counts, session_logits
from adabits.export.pte_delegation import delegated_op_counts
from adabits.quant.float_twin import float_twin
from benchmarks.deploy import runtime_peers

SHAPE = (1, 28, 28)
MODELS = ("two_conv", "resnet8")


def settled(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """`model` in eval mode with BatchNorm statistics of `images`, so activations keep a sane scale
    through the random layers, as in a trained network."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "two_conv":
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    else:  # the float twin of our smallest CIFAR ResNet, narrowed: what the benchmark starts from
        model = float_twin(adabits.create_model("resnet_cifar", bits_list=[8, 4], num_classes=10, in_chans=1,
                                                depth=8, width=4))
    return settled(model, images(64, seed=1))


def images(count: int, seed: int) -> torch.Tensor:
    return torch.randn((count, *SHAPE), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> nn.Module:
    return build(request.param)


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return images(32, seed=2)


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return images(32, seed=3)


def expected(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_close_peer(model: nn.Module, x: torch.Tensor, logits) -> None:
    """The int8 peer agrees with the float model: most argmaxes, and logits within 20% (relative norm)."""
    reference, logits = expected(model, x), torch.as_tensor(logits)
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    error = ((logits - reference).norm() / reference.norm()).item()
    assert agreement >= 0.75, agreement
    assert error < 0.2, error


def test_ort_float32_matches_the_model_at_any_batch(model, inputs, tmp_path: Path):
    session = runtime_peers.ort_float32(model, inputs[:2], tmp_path / "float.onnx", threads=1)
    for x in (inputs[:1], inputs):
        torch.testing.assert_close(torch.from_numpy(session_logits(session, x)), expected(model, x),
                                   rtol=1e-4, atol=1e-4)


def test_ort_int8_peer_agrees_and_runs_integer_kernels(model, calibration, inputs, tmp_path: Path):
    runtime_peers.ort_float32(model, inputs[:2], tmp_path / "float.onnx", threads=1)
    session = runtime_peers.ort_int8_peer(tmp_path / "float.onnx", calibration, tmp_path / "int8.onnx", threads=1)
    assert_close_peer(model, inputs, session_logits(session, inputs))
    assert session_logits(session, inputs[:1]).shape == (1, 10)
    ops = optimized_op_counts(tmp_path / "int8.onnx")
    assert ops["QLinearConv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert "Conv" not in ops


def test_pte_float32_matches_the_model_at_any_batch(model, inputs):
    edge = runtime_peers.float32_edge(model, inputs[:2])
    counts = delegated_op_counts(edge)
    assert counts.delegate_calls == 1 and counts.all_delegated, counts
    assert counts.delegated_ops["convolution.default"] == counts.float_ops["convolution.default"] > 0
    assert not counts.all_integer
    runner = runtime_peers.PteRunner(runtime_peers.to_pte(edge))
    for x in (inputs[:1], inputs[:7], inputs):
        torch.testing.assert_close(runner.run(x), expected(model, x), rtol=1e-4, atol=1e-4)


def test_pte_int8_peer_agrees_and_is_all_integer(model, calibration, inputs):
    edge = runtime_peers.int8_peer_edge(model, inputs[:2], calibration)
    counts = delegated_op_counts(edge)
    assert counts.delegate_calls == 1 and counts.all_integer, counts
    assert counts.delegated_ops["quantized_decomposed.dequantize_per_channel.default"] > 0
    runner = runtime_peers.PteRunner(runtime_peers.to_pte(edge))
    assert_close_peer(model, inputs, runner.run(inputs))
    assert runner.run(inputs[:1]).shape == (1, 10)


def recording(load_method, calls: list[str]):
    """`load_method` that also appends each name it loads to `calls`."""
    def load(name: str):
        calls.append(name)
        return load_method(name)
    return load


@pytest.fixture(scope="module")
def fixed_batch_program() -> bytes:
    return runtime_peers.pte_float32(build("two_conv"), images(4, seed=4), max_batch=None)


def test_pte_runner_loads_each_method_once(fixed_batch_program, tmp_path: Path, monkeypatch):
    path = tmp_path / "model.pte"
    path.write_bytes(fixed_batch_program)
    for source in (fixed_batch_program, path, str(path)):
        runner = runtime_peers.PteRunner(source)
        assert runner.method_names == {"forward"}
        loads: list[str] = []
        monkeypatch.setattr(runner.program, "load_method", recording(runner.program.load_method, loads))
        first = runner.run(images(4, seed=5))
        second = runner.run(images(4, seed=5))
        assert loads == ["forward"] and runner.method() is runner.method("forward")
        torch.testing.assert_close(first, second)
        with pytest.raises(KeyError, match="no method 'backward'"):
            runner.method("backward")


def test_a_fixed_batch_program_takes_only_its_batch(fixed_batch_program):
    runner = runtime_peers.PteRunner(fixed_batch_program)
    model, x = build("two_conv"), images(4, seed=6)
    torch.testing.assert_close(runner.run(x), expected(model, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError):
        runner.run(x[:2])


def test_models_in_training_mode_and_batches_over_the_maximum_are_refused(tmp_path: Path):
    model = build("two_conv")
    with pytest.raises(ValueError, match="training mode"):
        runtime_peers.ort_float32(model.train(), images(2, seed=7), tmp_path / "float.onnx")
    with pytest.raises(ValueError, match="max_batch"):
        runtime_peers.float32_edge(model.eval(), images(8, seed=7), max_batch=4)
