"""RunRecords: metrics.jsonl always; TensorBoard events when the run asks for them, one note when it cannot."""
import json
import sys
from pathlib import Path

import pytest

from adabits.engine import build_config
from adabits.engine.report import metrics_lines
from adabits.engine.run_records import RunRecords

TRAIN = {8: {"loss": 0.5, "top1_error": 0.2}, 4: {"loss": 0.7, "top1_error": 0.3}}
VAL = {8: {"loss": 0.6, "top1_error": 0.25}, 4: {"loss": 0.8, "top1_error": 0.35}}


def write_one_epoch(run_dir: Path, tensorboard: bool = False) -> list[str]:
    notes: list[str] = []
    records = RunRecords(run_dir, build_config({"tensorboard": tensorboard}), notes.append)
    if tensorboard:
        records.open_tensorboard(None)
    records.append(0, 0.1, TRAIN, VAL, metrics_lines(0, 0.1, 2.0, TRAIN, VAL))
    records.close()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["bits"], r["val_loss"], r["train_top1_error"]) for r in rows] == [(8, 0.6, 0.2), (4, 0.8, 0.3)]
    return notes


def test_tensorboard_events_when_asked_for(tmp_path: Path) -> None:
    # The dev extra installs tensorboard (scripts/setup.sh): here it is present, never skipped.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert write_one_epoch(tmp_path, tensorboard=True) == []
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(s.step, s.value) for s in events.Scalars("val_loss/4-bit")] == [(1, pytest.approx(0.8))]
    assert [s.value for s in events.Scalars("lr")] == [pytest.approx(0.1)]


def test_no_tensorboard_unless_asked_for(tmp_path: Path) -> None:
    assert write_one_epoch(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_asked_for_but_missing_gives_one_note_and_the_run_goes_on(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it now fails
    (note,) = write_one_epoch(tmp_path, tensorboard=True)
    assert "tensorboard is not installed" in note and "adabits[tensorboard]" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
