"""Loss and top-k error accumulated on the device; the host reads them only when asked (no per-step sync).

Meters hold sums (samples, loss x samples, correct counts), never averages, so the metrics of several
processes combine exactly by adding their sums: `MeterSet.reduce_(all_reduce_sum_)`.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..quant.bitwidth import Bits


class BitMeter:
    """Sums of [samples, loss * samples, correct@k for each k] for one bit-width, kept as one device tensor."""

    def __init__(self, topk: list[int], device: torch.device | str) -> None:
        self.topk = list(topk)
        self.sums = torch.zeros(2 + len(self.topk), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        n = labels.shape[0]
        kmax = min(max(self.topk), logits.shape[1])
        hits = logits.topk(kmax, dim=1).indices.eq(labels[:, None])
        cum = hits.cumsum(dim=1).sum(dim=0)  # cum[j]: samples whose label is within the top j+1
        correct = torch.stack([cum[min(k, kmax) - 1] for k in self.topk])
        row = torch.cat([torch.tensor([n], device=loss.device, dtype=torch.float64),
                         (loss.detach().double() * n).reshape(1), correct.double()])
        self.sums += row

    @property
    def samples(self) -> int:
        return int(self.sums[0].item())

    def summary(self) -> dict[str, float]:
        """{'loss': mean loss, 'top1_error': ..., 'top5_error': ...}; errors are fractions in [0, 1]."""
        values = self.sums.tolist()
        n = max(values[0], 1.0)
        out = {"loss": values[1] / n}
        for k, c in zip(self.topk, values[2:]):
            out[f"top{k}_error"] = 1.0 - c / n
        return out


class MeterSet:
    """One BitMeter per bit-width."""

    def __init__(self, bits: list[Bits], topk: list[int], device: torch.device | str) -> None:
        self.meters = {b: BitMeter(topk, device) for b in bits}

    def __getitem__(self, bits: Bits) -> BitMeter:
        return self.meters[bits]

    def summary(self) -> dict[Bits, dict[str, float]]:
        """Per bit-width that saw samples (a sandwich-sampled epoch may never have drawn one)."""
        return {b: m.summary() for b, m in self.meters.items() if m.samples}

    def reduce_(self, sum_: Callable[[torch.Tensor], torch.Tensor]) -> "MeterSet":
        """Replace every meter's sums by `sum_` of them all stacked (one collective for all bit-widths)."""
        stacked = sum_(torch.stack([m.sums for m in self.meters.values()]))
        for meter, sums in zip(self.meters.values(), stacked):
            meter.sums = sums.clone()
        return self
