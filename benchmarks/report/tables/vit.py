"""Tables of the vision transformer's benchmarks (accuracy/vit_accuracy.py, deploy/vit_deploy.py)."""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ..markdown import table
from ..table import Table, exact_mean, fmt

BITS = ("8", "6", "5", "4")


def _stats(values: list[float]) -> str:
    """Mean ± half the range over seeds, rounded half up from the file's decimals."""
    half_range = (Decimal(repr(max(values))) - Decimal(repr(min(values)))) / 2
    return f"{fmt(exact_mean(values))} ± {fmt(half_range)}"


def _gap(per_seed: dict[str, float]) -> str:
    """The mean of the seeds' gaps, then each seed's."""
    values = list(per_seed.values())
    return f"{_signed(exact_mean(values))} ({', '.join(_signed(v) for v in values)})"


def _signed(value: Any) -> str:
    text = fmt(value)
    return text if text.startswith("-") else f"+{text}"


def _accuracy(files: Sequence[dict[str, Any]]) -> str:
    """Joint against individual and switchable against shared LayerNorm, per bit-width."""
    data = files[0]
    seeds = data["top1"].values()
    rows = [[bits, _stats([s[f"individual_{bits}"][bits] for s in seeds]), _stats([s["joint"][bits] for s in seeds]),
             _gap(data["joint_minus_individual"][bits]), _stats([s["joint_shared_layernorm"][bits] for s in seeds]),
             _gap(data["switchable_minus_shared_layernorm"][bits])] for bits in BITS]
    return table(["bits", "trained for these bits alone", "one model for 8/6/5/4", "joint − individual (per seed)",
                  "joint, one shared LayerNorm", "per-bit − shared LayerNorm (per seed)"], rows)


def _ms(latency: dict[str, Any], key: str) -> str:
    """Median ms at batch 1 / batch 64."""
    return f"{fmt(latency['1']['median_ms'][key], 3)} / {fmt(latency['64']['median_ms'][key], 2)}"


def _peer(data: dict[str, Any], runtime: str) -> str:
    """The runtime's own int8 model: its latency and top-1, or why it failed to build."""
    error = data.get("peer_errors", {}).get(f"{runtime}_int8_peer")
    if error:
        return f"fails to build (`{error.split(': ')[1] if ': ' in error else error}`)"
    return f"{_ms(data['latency'], f'{runtime}_int8_peer')} (top-1 {fmt(data['peer_top1'][f'{runtime}_int8_peer'])} %)"


def _deploy(files: Sequence[dict[str, Any]]) -> str:
    """Median ms of the exported ViT against the float32 model and the runtime's own int8, batch 1 / 64."""
    data = files[0]
    latency = data["latency"]
    rows = [[label, _ms(latency, f"{runtime}_float32"), _peer(data, runtime), _ms(latency, f"{ours}_ours_8"),
             _ms(latency, f"{ours}_ours_4")] for label, runtime, ours in
            (("ONNX Runtime", "ort", "onnx"), ("ExecuTorch/XNNPACK", "pte", "pte"))]
    return table(["runtime", "float32 ViT", "runtime's own int8 of it", "ours, 8 bits", "ours, 4 bits"], rows)


TABLES = {
    "vit_accuracy": Table(("benchmarks/results/accuracy/vit_accuracy.json",), _accuracy),
    "vit_deploy": Table(("benchmarks/results/deploy/vit_deploy.json",), _deploy),
}
