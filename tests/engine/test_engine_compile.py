"""`compile: true`: the compiled model follows set_bits (a slow test: compiling takes minutes on CPU)."""
from __future__ import annotations

import pytest
import torch
from _engine_helpers import tiny_config

import adabits
from adabits.engine import Trainer


@pytest.mark.slow
def test_compiled_model_switches_bit_widths(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, compile=True), echo=lambda _m: None).prepare()
    model, compiled = trainer.model, trainer.forward
    assert compiled is not model
    model.eval()
    images, _ = next(iter(trainer.loaders.val))
    with torch.no_grad():
        eager = {}
        for bits in (8, 4):
            adabits.set_bits(model, bits)
            eager[bits] = model(images)
        for bits, other in ((8, 4), (4, 8), (8, 4)):
            adabits.set_bits(model, bits)
            out = compiled(images)
            # fused kernels may flip a few rounding decisions, so compare distances, not bits
            assert (out - eager[bits]).norm() < 0.5 * (out - eager[other]).norm()
