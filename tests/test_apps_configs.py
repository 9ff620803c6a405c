"""Every experiment config under apps/ loads, validates and builds a model that runs at each of its bit-widths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adabits
from adabits.engine import load_config
from adabits.engine.build import build_model

APPS = Path(__file__).resolve().parent.parent / "apps"
CONFIGS = sorted(APPS.rglob("*.yml"))


def test_the_paper_setups_have_configs() -> None:
    names = {p.relative_to(APPS).as_posix() for p in CONFIGS}
    for needed in ("cifar10/q_resnet20_543.yml", "cifar10/q_resnet20_8654.yml", "cifar10/q_resnet20_432.yml",
                   "cifar100/q_resnet20_543.yml", "imagenet/q_mobilenet_v1_8654.yml",
                   "imagenet/q_mobilenet_v2_8654.yml", "imagenet/q_resnet50_432.yml"):
        assert needed in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(APPS).as_posix())
def test_config_loads_and_builds_its_model(path: Path) -> None:
    cfg = load_config([f"app:{path}"]).config
    if cfg.fp_pretrained_format == "plain":  # a public float model's weights, saved as the config's comment says
        assert "torch.save" in path.read_text() and cfg.weight_quantizer == "channel" and not cfg.clamp
    elif cfg.fp_pretrained_file:  # stage 2 starts from the best model of a stage-1 config of the same folder
        fp_run = Path(cfg.fp_pretrained_file)
        assert fp_run.name == "best_model.pt" and fp_run.parent.parent == Path(cfg.log_dir)
        stage1 = load_config([f"app:{path.parent / (fp_run.parent.name + '.yml')}"]).config
        assert stage1.model == cfg.model and stage1.bits_list == [32]
    torch.manual_seed(0)
    model = build_model(cfg, cfg.num_classes or 10, cfg.in_chans or 3).eval()
    size = 28 if cfg.dataset == "fashion_mnist" else 32  # the dataset's images (the ViT's position embedding fits them)
    images = torch.randint(0, 256, (1, cfg.in_chans or 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        for bits in cfg.train_bits:
            adabits.set_bits(model, bits)
            assert model(images).shape == (1, cfg.num_classes or 10)
