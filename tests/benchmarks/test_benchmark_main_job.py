"""benchmarks/accuracy/main_job.py: which epoch's top-1 it reports."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.accuracy.main_job import best_top1


def test_the_reported_top1_is_the_epoch_of_the_lowest_mean_error(tmp_path: Path) -> None:
    rows = [(1, 8, 0.10), (1, 4, 0.12), (2, 8, 0.09), (2, 4, 0.14), (3, 8, 0.095), (3, 4, 0.11)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"epoch": e, "bits": b, "val_top1_error": err}) + "\n" for e, b, err in rows))
    assert best_top1(metrics) == {"8": 90.5, "4": 89.0}  # epoch 3: mean 0.1025, against 0.11 and 0.115
