"""The accuracy-cost front of one trained model over per-layer bit assignments, with no retraining.

1. Sensitivity: on calibration batches, the loss with every quantized layer at the highest bit-width, and with
   one layer at a time lowered to each other bit-width; a layer's sensitivity at b is the loss it adds.
2. Allocation: for a budget, the assignment with the least summed sensitivity whose cost fits (a multiple-choice
   knapsack, solved exactly by dynamic programming on costs rounded up to 1/RESOLUTION of the budget, so the
   chosen assignment never exceeds it).
3. Each candidate, and each uniform bit-width, is evaluated on held-out batches: the front is measured, not
   predicted.

Costs per layer come from `adabits.analysis.profile` at each uniform bit-width: `weight_bytes` (every stored
value at the bits it runs at) or `bitops` (MACs x weight bits x activation bits); or, for `latency`, from
timing each quantized layer alone in ONNX Runtime at each bit-width (`layer_latency.py`, microseconds at
batch 1; the rest of the model is left out).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..quant.assignment import quantized_layers
from ..quant.bitwidth import Bits, bits_text, get_bits, get_bits_list, parse_bits, set_bits
from .evaluation import evaluate, top1
from .profile import profile_model

Cost = Literal["weight_bytes", "bitops", "latency"]
COSTS: tuple[str, ...] = ("weight_bytes", "bitops", "latency")
#: the allocation's cost grid: the budget in this many steps (costs are rounded up onto it)
RESOLUTION = 4096


@dataclass(frozen=True)
class Candidate:
    """One point: an assignment of every quantized layer, its cost, predicted loss increase and measured top-1."""

    assignment: dict[str, Bits]
    cost: float
    predicted: float
    top1: float
    uniform: Bits | None = None  # the bit-width, when every layer shares one


@dataclass
class Front:
    """The measured candidates under each budget and the uniform points, with what they were chosen from."""

    cost: str
    uniform: list[Candidate]
    candidates: list[Candidate]
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def best_within(self, budget: float) -> Candidate:
        """The most accurate measured point (candidate or uniform) whose cost fits `budget`."""
        fitting = [c for c in (*self.candidates, *self.uniform) if c.cost <= budget]
        if not fitting:
            cheapest = min(c.cost for c in (*self.candidates, *self.uniform))
            raise UserError(f"budget {budget:,.0f} ({self.cost}) is below the cheapest assignment's {cheapest:,.0f}")
        return max(fitting, key=lambda c: c.top1)

    def to_dict(self) -> dict[str, Any]:
        def plain(candidate: Candidate) -> dict[str, Any]:
            row = asdict(candidate)
            row["assignment"] = {k: list(v) if isinstance(v, tuple) else v for k, v in candidate.assignment.items()}
            return row

        return {"cost": self.cost, "seconds": round(self.seconds, 1), "uniform": [plain(c) for c in self.uniform],
                "candidates": [plain(c) for c in self.candidates], "sensitivity": self.sensitivity}


def layer_costs(model: nn.Module, input_size: tuple[int, ...], cost: Cost,
                accuracy_level: int = 0) -> tuple[dict[str, dict[Bits, float]], float]:
    """({quantized layer: {bits: its cost}}, the cost of everything else), from the profile at each bit-width
    (`latency`: from timing each layer in ONNX Runtime at `accuracy_level`; everything else costs 0)."""
    if cost not in COSTS:
        raise UserError(f"cost must be one of {', '.join(COSTS)}; got {cost!r}")
    if accuracy_level != 0 and cost != "latency":
        raise UserError(f"accuracy_level= applies to cost=latency (the layers' kernels); got cost={cost}")
    if cost == "latency":
        from .layer_latency import layer_latency

        return layer_latency(model, input_size, accuracy_level=accuracy_level), 0.0
    layers = quantized_layers(model)
    per_layer: dict[str, dict[Bits, float]] = {name: {} for name in layers}
    fixed = 0.0
    for profile in profile_model(model, input_size, get_bits_list(model)):
        fixed = 0.0
        for row in profile.layers:
            value = row.size_bits / 8 if cost == "weight_bytes" else float(row.bitops)
            if row.name in per_layer:
                per_layer[row.name][profile.bits] = value  # type: ignore[index]  # a uniform profile's bits
            else:
                fixed += value
    return per_layer, fixed


@torch.no_grad()
def sensitivity(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> dict[str, dict[Bits, float]]:
    """{layer: {bits: loss added}} with every other layer at the highest bit-width (0 at the highest)."""
    bits_list = get_bits_list(model)
    top = max(bits_list, key=parse_bits)
    layers = list(quantized_layers(model))

    def loss(assignment: dict[str, Bits]) -> float:
        set_bits(model, assignment)
        return evaluate(model, batches, [None], topk=(1,))[None]["loss"]  # type: ignore[list-item,index]  # as set

    base_assignment = {name: top for name in layers}
    base = loss(base_assignment)
    result: dict[str, dict[Bits, float]] = {}
    for name in layers:
        result[name] = {top: 0.0}
        for bits in bits_list:
            if bits != top:
                result[name][bits] = loss({**base_assignment, name: bits}) - base
    return result


def allocate(costs: dict[str, dict[Bits, float]], sensitivities: dict[str, dict[Bits, float]],
             budget: float) -> tuple[dict[str, Bits], float] | None:
    """The assignment of least summed sensitivity whose summed cost is at most `budget` (None: none fits)."""
    layers = list(costs)
    if budget <= 0 or sum(min(c.values()) for c in costs.values()) > budget:
        return None
    unit = budget / RESOLUTION
    best = np.full(RESOLUTION + 1, math.inf)
    best[0] = 0.0
    choices: list[np.ndarray] = []
    for name in layers:
        options = list(costs[name])
        step = np.full(RESOLUTION + 1, math.inf)
        pick = np.full(RESOLUTION + 1, -1)
        for index, bits in enumerate(options):
            width = math.ceil(costs[name][bits] / unit - 1e-9)
            if width > RESOLUTION:
                continue
            shifted = np.full(RESOLUTION + 1, math.inf)
            shifted[width:] = best[:RESOLUTION + 1 - width] + sensitivities[name][bits]
            better = shifted < step
            step[better], pick[better] = shifted[better], index
        best = step
        choices.append(pick)
    end = int(np.argmin(best))
    if not math.isfinite(best[end]):
        return None
    assignment: dict[str, Bits] = {}
    for name, pick in zip(reversed(layers), reversed(choices)):
        bits = list(costs[name])[int(pick[end])]
        assignment[name] = bits
        end -= math.ceil(costs[name][bits] / unit - 1e-9)
    return dict(reversed(list(assignment.items()))), float(best[int(np.argmin(best))])


def search(model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]], held_out: Iterable[tuple[Tensor, Tensor]],
           input_size: tuple[int, ...], *, cost: Cost = "weight_bytes", budgets: Sequence[float] | None = None,
           points: int = 9, accuracy_level: int = 0) -> Front:
    """The measured front of `model` (every quantized layer at any of its bit-widths): `budgets` (default: `points`
    budgets evenly between the cheapest and the dearest uniform bit-width), each allocated and evaluated on
    `held_out`, beside the uniform bit-widths; `accuracy_level` is the ONNX export's for `cost="latency"`. The
    model's bit-width and mode are restored."""
    import time

    started = time.perf_counter()
    calibration, held_out = list(calibration), list(held_out)
    previous, was_training = get_bits(model), model.training
    try:
        costs, fixed = layer_costs(model, input_size, cost, accuracy_level)
        scores = sensitivity(model, calibration)
        uniform = []
        for bits in get_bits_list(model):
            assignment = {name: bits for name in costs}
            uniform.append(Candidate(assignment, fixed + sum(c[bits] for c in costs.values()),
                                     sum(s[bits] for s in scores.values()), top1(model, held_out, bits), bits))
        if budgets is None:
            low, high = min(u.cost for u in uniform), max(u.cost for u in uniform)
            budgets = [low + (high - low) * i / (points - 1) for i in range(points)] if points > 1 else [high]
        candidates = []
        for budget in budgets:
            found = allocate(costs, scores, budget - fixed)
            if found is None:
                continue
            assignment, predicted = found
            spent = fixed + sum(costs[name][bits] for name, bits in assignment.items())
            set_bits(model, assignment)
            candidates.append(Candidate(assignment, spent, predicted, top1(model, held_out)))
    finally:
        set_bits(model, previous)
        model.train(was_training)
    sensitivities = {name: {bits_text(b, "config"): round(v, 5) for b, v in row.items()} for name, row in scores.items()}
    return Front(cost, uniform, candidates, sensitivities, time.perf_counter() - started)


def plot_front(front: Front, path: Any, title: str) -> None:
    """The measured candidates and the uniform points, top-1 against cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ordered = sorted(front.candidates, key=lambda c: c.cost)
    ax.plot([c.cost for c in ordered], [c.top1 for c in ordered], "o-", label="per-layer assignments")
    ax.plot([u.cost for u in front.uniform], [u.top1 for u in front.uniform], "s--", label="uniform")
    for u in front.uniform:
        ax.annotate(bits_text(u.uniform), (u.cost, u.top1), textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel(front.cost.replace("_", " "))
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
