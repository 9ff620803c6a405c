"""`adabits search app:... cost=weight_bytes|bitops|latency [budget=N]`: the trained model's accuracy-cost front over
per-layer bit assignments (adabits/analysis/search.py), written into the run folder.

Sensitivities come from the first `calibration_images` training images, every candidate is measured on the
validation set (its first `held_out_images`, when set). The run folder gets `search/front.json`, `front.png`
and, with a budget, `assignment.json`: the most accurate measured point within it, which `set_bits`,
`profile bits=@FILE` and `read_assignment` take.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from torch import Tensor

from ..analysis.search import Cost, plot_front, search
from ..atomic import atomic_write
from ..data import build_loader
from ..quant.assignment import write_assignment
from ..quant.bitwidth import bits_text
from .config import TrainConfig
from .loading import load_trained, run_dir
from .write_errors import reported


def _batches(cfg: TrainConfig, split: str, count: int | None) -> list[tuple[Tensor, Tensor]]:
    loader, _ = build_loader(cfg, split, torch.device("cpu"))  # type: ignore[arg-type]  # "train" or "val"
    taken, out = 0, []
    for images, labels in loader:
        out.append((images, labels))
        taken += len(images)
        if count is not None and taken >= count:
            break
    return out


def run_search(cfg: TrainConfig, cost: Cost, budget: float | None, points: int, calibration_images: int,
               held_out_images: int | None, out: str | None, from_start: bool, accuracy_level: int = 0) -> str:
    trained = load_trained(cfg, from_start=from_start)
    shape = trained.shape
    front = search(trained.model, _batches(cfg, "train", calibration_images), _batches(cfg, "val", held_out_images),
                   (shape.in_chans, shape.image_size, shape.image_size), cost=cost,
                   budgets=None if budget is None else sorted({budget, *_default_budgets(budget, points)}),
                   points=points, accuracy_level=accuracy_level)
    folder = Path(out) if out else run_dir(cfg) / "search"
    folder.mkdir(parents=True, exist_ok=True)
    with reported(folder / "front.json"), atomic_write(folder / "front.json", "w") as f:
        json.dump(front.to_dict(), f, indent=1)
    with reported(folder / "front.png"):
        plot_front(front, folder / "front.png", f"{cfg.model} on {cfg.dataset}: {cost.replace('_', ' ')}")
    rows = [f"{'point':>14} | {cost:>14} | {'top-1 %':>7}"]
    for point in sorted([*front.uniform, *front.candidates], key=lambda c: c.cost):
        label = f"uniform {bits_text(point.uniform)}" if point.uniform is not None else "per-layer"
        rows.append(f"{label:>14} | {point.cost:>14,.0f} | {point.top1:>7.2f}")
    text = "\n".join(rows) + f"\nwrote {folder / 'front.json'} and front.png ({front.seconds:.0f} s)"
    if budget is not None:
        chosen = front.best_within(budget)
        path = write_assignment(folder / "assignment.json", chosen.assignment)
        text += f"\nwithin {budget:,.0f}: top-1 {chosen.top1:.2f} % at {chosen.cost:,.0f}; wrote {path}"
    return text


def _default_budgets(budget: float, points: int) -> list[float]:
    """A few budgets around the one asked for, so that the front shows what a little more or less buys."""
    return [budget * (1 + step / (2 * points)) for step in itertools.chain(range(-points // 2, 0), range(1, points // 2))]
