"""The fast paths of a training step compute what the reference computes: compiled quantizers (bit-exact
forward and input gradient), mixed precision (exact levels, resume), and a step with no host reads that
compiles as one graph (issue: a GPU-ready step). None of these tests times anything."""
from __future__ import annotations

import pytest
import torch
from _engine_helpers import tiny_config
from _preempt_helpers import StopAfter, assert_same_weights, no_plots, quiet, weights

import adabits
from adabits.analysis.host_reads import HostReads
from adabits.engine import Interrupted, Trainer
from adabits.engine.checkpoint import GRAD_SCALER_KEY
from adabits.quant.functional import quantize_activation
from adabits.quant.grid import Grid
from adabits.quant.residual import Int8Observer, covering_on_device


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch) -> None:
    no_plots(monkeypatch)


# ---------------------------------------------------------------- compiled quantizers
@pytest.mark.parametrize("scheme", ["original", "modified", "centered"])
@pytest.mark.parametrize("double_side", [False, True])
def test_compiled_pact_equals_the_eager_one_bit_for_bit(scheme, double_side):
    torch.manual_seed(0)
    x = (torch.randn(8, 4, 6, 6) * 3).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    for bits in (2, 4, 8):
        results = []
        for compiled in (False, True):
            xr = x.clone().requires_grad_()
            alpha = torch.tensor(2.3, requires_grad=True)
            out = quantize_activation(xr, alpha, bits, scheme, double_side, compiled=compiled)
            out.backward(grad)
            results.append((out.detach(), xr.grad, alpha.grad))
        (eager, eager_gx, eager_ga), (fused, fused_gx, fused_ga) = results
        assert torch.equal(eager, fused) and torch.equal(eager_gx, fused_gx), (bits, scheme, double_side)
        assert fused_ga == pytest.approx(eager_ga.item(), rel=1e-4)  # a sum in another order


def test_compiled_pact_compiles_a_graph_per_layout_whatever_the_scheme_and_side():
    """The first GPU run hit dynamo's recompile limit: a graph per (rounds, side, layout) outgrew it."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # other tests of this process compiled graphs of their own
    x = torch.randn(4, 3, 5, 5) * 3
    for layout in (torch.contiguous_format, torch.channels_last):
        for scheme in ("original", "modified", "centered"):
            for double_side in (False, True):
                xs = x.contiguous(memory_format=layout).requires_grad_()
                out = quantize_activation(xs, torch.tensor(2.0), 4, scheme, double_side, compiled=True)
                assert out.is_contiguous(memory_format=layout)
                assert torch.equal(out, quantize_activation(xs.detach(), torch.tensor(2.0), 4, scheme, double_side))
                out.backward(torch.randn_like(out))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs <= 4, graphs  # forward and backward, once per layout (dynamo guards the flat view's base)


def test_compiled_quantizers_train_only_and_match_the_eager_model():
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=4, in_chans=1)
    twin = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=4, in_chans=1)
    twin.load_state_dict(model.state_dict())
    assert adabits.compile_quantizers(twin) == sum(isinstance(m, adabits.QuantLayer) for m in twin.modules())
    x = torch.randn(16, 1, 8, 8)
    for bits in (8, 4):
        adabits.set_bits(model, bits)
        adabits.set_bits(twin, bits)
        model.train(), twin.train()
        assert torch.allclose(model(x), twin(x), rtol=1e-4, atol=1e-5)
        model.eval(), twin.eval()
        assert torch.equal(model(x), twin(x))  # evaluation uses the eager reference


# ---------------------------------------------------------------- the residual observer, on the device
@pytest.mark.parametrize("low, high", [(-3.0, 5.0), (0.0, 1e-3), (-0.7, 0.0), (0.2, 0.9), (-1e-9, 1e-9), (-1000.0, 3.0)])
def test_the_observers_device_grid_is_the_exports_grid(low, high):
    row = torch.tensor([low, high], dtype=torch.float32)
    want = Grid.covering(*row.tolist())
    scale, bottom, top = covering_on_device(row)
    assert (scale.item(), bottom.item(), top.item()) == (want.scale, want.low, want.high)


def test_an_observer_without_a_range_passes_its_input_in_eval():
    observer = Int8Observer([8, 4]).eval()
    x = torch.randn(5)
    assert torch.equal(observer(x), x)


# ---------------------------------------------------------------- a step that never waits for the device
def test_a_joint_step_reads_nothing_on_the_host(tmp_path):
    # (a sandwich draw reads a permutation of a CPU generator, never a device tensor: not counted here)
    cfg = tiny_config(tmp_path, bits_list=[8, 6, 5, 4], quantize_residual=True, joint_loss="mean", distill="recursive")
    trainer = Trainer(cfg, echo=quiet).prepare()
    images, labels = next(iter(trainer.loaders.train))
    trainer.train_step(images, labels, step=0)  # the observers' ranges start in the first step
    meters = trainer.evaluate_meters()  # (a MeterSet of the right kind for the step to fill)
    with HostReads() as reads:
        trainer.train_step(images, labels, 1.0, meters, step=1)
    assert reads.calls == []


@pytest.mark.parametrize("compiled_quantizers", [False, True])
def test_the_forward_compiles_as_one_graph(compiled_quantizers):
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[8, 4], num_classes=4, in_chans=1,
                                 quantize_residual=True)
    assert any(isinstance(m, Int8Observer) for m in model.modules())
    if compiled_quantizers:
        adabits.compile_quantizers(model)
    whole = torch.compile(model, fullgraph=True, backend="eager")  # a graph break raises
    x = torch.randn(4, 1, 8, 8)
    for bits in (8, 4):
        adabits.set_bits(model, bits)
        whole(x).sum().backward()
    model.eval()
    whole(x)


# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compiled", [False, True])
def test_levels_stay_exact_under_autocast(dtype, compiled):
    """Each quantized value rounds back to its float32 code: a low-precision rounding moves it by less
    than half a step, at every bit-width up to 8."""
    torch.manual_seed(0)
    layer = adabits.QConv2d(4, 4, 3, bits_list=[8, 4, 2])
    x = torch.randn(8, 4, 6, 6).abs().to(dtype)
    for bits in (8, 4, 2):
        adabits.set_bits(layer, bits)
        with torch.autocast("cpu", dtype=dtype):
            out = quantize_activation(x, layer.current_alpha(), bits, layer.act_quant_scheme, compiled=compiled)
        reference = quantize_activation(x.float(), layer.current_alpha(), bits, layer.act_quant_scheme)
        assert out.dtype == dtype
        step = layer.input_scale()
        assert torch.equal(torch.round(out.float() / step), torch.round(reference / step))
        assert torch.equal(out, reference.to(dtype))  # quantized in float32, rounded once


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_trains_and_resumes_as_the_uninterrupted_one(tmp_path, precision):
    full = Trainer(tiny_config(tmp_path / "full", precision=precision, checkpoint_every_steps=3), echo=quiet).prepare()
    full.fit()
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        StopAfter(patch, 7)
        Trainer(tiny_config(tmp_path / "cut", precision=precision, checkpoint_every_steps=3), echo=quiet).prepare().fit()
    saved = torch.load(tmp_path / "cut" / "tiny" / "latest_checkpoint.pt", weights_only=True)
    assert (GRAD_SCALER_KEY in saved) == (precision == "fp16")
    resumed = Trainer(tiny_config(tmp_path / "cut", precision=precision, checkpoint_every_steps=3), echo=quiet).prepare()
    resumed.fit()
    assert_same_weights(weights(full), weights(resumed))
    fp32 = Trainer(tiny_config(tmp_path / "fp32"), echo=quiet).prepare()
    fp32.fit()
    assert any(not torch.equal(a, b) for a, b in zip(weights(full).values(), weights(fp32).values()))
