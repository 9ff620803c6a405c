"""The ViT trains through the engine like the CNNs: float stage, then joint stage 2 with data-chosen clipping,
then deploys to ONNX Runtime and ExecuTorch through the torch.export graph (graph=qdq)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_helpers import tiny_config

import adabits
from adabits.engine import Trainer
from adabits.engine.config import TrainConfig
from adabits.engine.deploy import export
from adabits.engine.loading import load_trained
from adabits.errors import ExportError
from adabits.runtime import load

VIT = {"model": "vit_tiny", "depth": None, "optimizer": "adamw", "lr": 0.003,
       "model_options": {"image_size": 8, "patch_size": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}}


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, dict]:
    """A float ViT, then the joint model trained from it: (the joint config, its best metrics)."""
    folder = tmp_path_factory.mktemp("vit")
    float_cfg = tiny_config(folder, **VIT, bits_list=[32], run_name="fp", num_epochs=1)
    Trainer(float_cfg, echo=quiet).prepare().fit()
    cfg = tiny_config(folder, **VIT, run_name="joint", fp_pretrained_file=str(folder / "fp" / "best_model.pt"),
                      alpha_init="mse", joint_loss="mean")
    return cfg, Trainer(cfg, echo=quiet).prepare().fit()


def test_a_vit_trains_in_float_then_jointly_with_the_clipping_sides_chosen_and_saved(joint_run):
    cfg, best = joint_run
    assert 0.0 <= best["mean_top1_error"] <= 1.0
    state = torch.load(Path(cfg.log_dir) / "joint" / "best_model.pt", weights_only=True)["model"]
    sides = {key: int(value) for key, value in state.items() if key.endswith("clip_side")}
    assert sides and set(sides.values()) <= {1, 2}  # every auto layer chose, before training
    assert sides["encoder.layers.0.self_attn.q_proj.clip_side"] == 2  # fed by LayerNorm: two-sided
    assert sides["encoder.layers.0.linear2.clip_side"] == 1  # fed by GELU: one-sided


def test_the_trained_vit_deploys_to_onnx_and_pte_through_torch_export(joint_run, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("executorch")
    cfg, _ = joint_run
    with pytest.raises(ExportError, match="flatten from dimension 2 has no export rule"):
        export(cfg, "onnx", graph="integer", out=str(tmp_path / "never"))  # the all-integer graph names what it lacks
    assert not (tmp_path / "never").exists()
    text = export(cfg, "onnx", out=str(tmp_path / "onnx"))
    assert "quantize/dequantize graph traced by torch.export; the all-integer graph does not cover this model" in text
    text = export(cfg, "pte", out=str(tmp_path / "vit.pte"))
    assert "methods forward_8, forward_4" in text and "traced by torch.export" in text
    model = load_trained(cfg).model
    images = torch.randint(0, 256, (32, 1, 8, 8), generator=torch.Generator().manual_seed(3)).float()
    for path in (tmp_path / "onnx", tmp_path / "vit.pte"):
        deployed = load(path)
        for bits in (8, 4):
            with adabits.use_bits(model, bits), torch.no_grad():
                expected = model(images).numpy()
            got = deployed.run(images, bits)
            assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.95, (path, bits)
            assert np.median(np.abs(got - expected)) < 1e-3, (path, bits)
