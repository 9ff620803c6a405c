"""A step whose loss or gradients are not finite: `nonfinite: stop` names it and the last good checkpoint (no
checkpoint ever holds its weights); `nonfinite: skip` leaves the weights as they were and counts it."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from _engine_helpers import tiny_args, tiny_config
from _preempt_helpers import quiet

from adabits.cli import main
from adabits.engine import Trainer
from adabits.errors import TrainingDiverged


def poison_step(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """The `at`-th optimizer step of the run (1-based) gets NaN images."""
    original, done = Trainer.train_step, [0]

    def train_step(trainer: Trainer, images: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        done[0] += 1
        original(trainer, images * math.nan if done[0] == at else images, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def finite(path) -> bool:
    return all(torch.isfinite(v).all() for v in torch.load(path, weights_only=True)["model"].values()
               if v.is_floating_point())


def test_stop_names_the_step_its_bit_widths_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_step(monkeypatch, at=5)  # 6 steps an epoch; a step checkpoint after step 4
    trainer = Trainer(tiny_config(tmp_path, checkpoint_every_steps=4), echo=quiet).prepare()
    with pytest.raises(TrainingDiverged, match=r"at step 5 of epoch 1: non-finite 8-bit, 4-bit, the gradients; the "
                                               r"last good checkpoint is .*latest_checkpoint\.pt \(at step 4 of epoch 1\)"):
        trainer.fit()
    assert finite(tmp_path / "tiny" / "latest_checkpoint.pt")
    assert not (tmp_path / "tiny" / "best_model.pt").exists()  # the bad step came before the first epoch's end


def test_skip_trains_on_without_the_bad_step(tmp_path, monkeypatch):
    poison_step(monkeypatch, at=3)
    notes: list[str] = []
    trainer = Trainer(tiny_config(tmp_path, nonfinite="skip"), echo=notes.append).prepare()
    trainer.fit()
    assert trainer.guard.skipped == 1
    assert any("skipped 1 step(s)" in note for note in notes)
    assert finite(tmp_path / "tiny" / "best_model.pt") and finite(tmp_path / "tiny" / "latest_checkpoint.pt")


def test_the_command_says_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    poison_step(monkeypatch, at=2)
    assert main(["train", *tiny_args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training diverged at step 2 of epoch 1") and "Traceback" not in "".join(err)
