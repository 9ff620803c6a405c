"""Helpers of the mid-epoch checkpoint tests: a model that draws from torch's global RNG, a config, an interrupt.

The model drops out part of its input in training, so a resumed run that did not put the random
states back would train on other inputs and end with other weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _engine_helpers import TINY
from torch import Tensor, nn

from adabits.engine import Trainer
from adabits.models.registry import list_models, register_model
from adabits.models.resnet_cifar import CifarResNet

DROPOUT_MODEL = "resnet8_input_dropout_test"


class InputDropoutResNet(CifarResNet):
    """ResNet-8 (width 8) with dropout on its input: every training step draws from torch's global RNG."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.dropout(x, 0.2, self.training))


if DROPOUT_MODEL not in list_models():
    def resnet8_input_dropout_test(bits_list: list, config: Any = None, num_classes: int = 10,
                                   in_chans: int = 3) -> nn.Module:
        return InputDropoutResNet(8, bits_list, config, num_classes, in_chans, width=8)

    register_model(resnet8_input_dropout_test)

#: 96 samples / batch 16 = 6 steps per epoch, 2 epochs; crops and flips draw from the loader's stream
PREEMPT: dict[str, Any] = {**{k: v for k, v in TINY.items() if k != "depth"}, "model": DROPOUT_MODEL,
                           "crop_padding": 1, "random_flip": True, "checkpoint_every_steps": 4}


def preempt_args(log_dir: Path, **changes: Any) -> list[str]:
    """PREEMPT as command-line overrides (for cli.main and train.py)."""
    raw = {**PREEMPT, "log_dir": str(log_dir), "run_name": "tiny", **changes}
    return [f"{k}={json.dumps(v)}" for k, v in raw.items()]


def quiet(_msg: str) -> None:
    pass


def no_plots(monkeypatch: Any) -> None:
    """accuracy_vs_bits.png costs more than a tiny run's training; these tests compare weights and metrics rows."""
    from adabits.engine import report

    monkeypatch.setattr(report, "plot_accuracy", lambda *args: None)


class StopAfter:
    """Patches Trainer.train_step to raise KeyboardInterrupt after `steps` optimizer steps of the run."""

    def __init__(self, monkeypatch: Any, steps: int) -> None:
        self.done, self.steps = 0, steps
        original = Trainer.train_step

        def train_step(trainer: Trainer, *args: Any, **kwargs: Any) -> None:
            if self.done == self.steps:
                raise KeyboardInterrupt
            original(trainer, *args, **kwargs)
            self.done += 1

        monkeypatch.setattr(Trainer, "train_step", train_step)


def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock seconds (the one field two identical runs may not share)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
