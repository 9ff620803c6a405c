"""The ViT trains through the engine like the CNNs: float stage, then joint stage 2 with data-chosen clipping."""
from __future__ import annotations

import torch

from adabits.engine import Trainer
from _engine_helpers import tiny_config

VIT = {"model": "vit_tiny", "depth": None, "optimizer": "adamw", "lr": 0.003,
       "model_options": {"image_size": 8, "patch_size": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}}


def quiet(_message: str) -> None:
    pass


def test_a_vit_trains_in_float_then_jointly_with_the_clipping_sides_chosen_and_saved(tmp_path):
    float_cfg = tiny_config(tmp_path, **VIT, bits_list=[32], run_name="fp", num_epochs=1)
    Trainer(float_cfg, echo=quiet).prepare().fit()
    cfg = tiny_config(tmp_path, **VIT, run_name="joint", fp_pretrained_file=str(tmp_path / "fp" / "best_model.pt"),
                      alpha_init="mse", joint_loss="mean")
    trainer = Trainer(cfg, echo=quiet).prepare()
    best = trainer.fit()
    assert 0.0 <= best["mean_top1_error"] <= 1.0
    state = torch.load(tmp_path / "joint" / "best_model.pt", weights_only=True)["model"]
    sides = {key: int(value) for key, value in state.items() if key.endswith("clip_side")}
    assert sides and set(sides.values()) <= {1, 2}  # every auto layer chose, before training
    assert sides["encoder.layers.0.self_attn.q_proj.clip_side"] == 2  # fed by LayerNorm: two-sided
    assert sides["encoder.layers.0.linear2.clip_side"] == 1  # fed by GELU: one-sided
