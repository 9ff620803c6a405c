"""Tables of the distributed benchmarks (benchmarks/distributed/)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..markdown import table
from ..table import Table, fmt

R = "benchmarks/results/distributed/"

#: the variants of distributed.json, as the docs name them
VARIANTS = {"single_process": "one process, batch 64",
            "adabits_ddp": "2 processes, `no_sync` + one all-reduce (adabits)",
            "ddp_per_backward": "2 processes, DDP sync in every backward"}


def _step(files: Sequence[dict[str, Any]]) -> str:
    """Median joint step and gradient all-reduces per step, one process against two."""
    data = files[0]
    rows = [[label, data["communications_per_step"][key]["all_reduce_calls"], fmt(data["median_step_s"][key], 2, " s"),
             fmt(data["ratio_to_single_process"][key])] for key, label in VARIANTS.items()]
    return table(["variant", "gradient all-reduces per step", "median step", "/ one process"], rows)


TABLES = {"distributed_step": Table((R + "distributed.json",), _step)}
