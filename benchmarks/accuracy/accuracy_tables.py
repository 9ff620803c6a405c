"""The accuracy benchmark's tables (Markdown) from the JSON that benchmarks/accuracy/accuracy.py writes: one
definition each, used by accuracy_report (the .md beside the results) and by `python -m benchmarks.report`
(the docs). Imports neither torch nor the library, so that rendering the docs stays cheap."""
from __future__ import annotations

from typing import Any

ABLATIONS = {
    "adabits_432": "AdaBits (switchable BN and clipping, SAT rescale, `centered`)",
    "adabits_432_no_switchbn": "one BN for all bit-widths",
    "adabits_432_one_alpha": "one clipping level for all bit-widths",
    "adabits_432_fixed_alpha": "fixed initial clipping levels (8 / 10) instead of chosen from data",
    "adabits_432_no_sat_rescale": "no SAT weight rescale",
    "adabits_432_no_sat_rescale_fixed_alpha": "no SAT weight rescale, fixed initial clipping levels",
    "adabits_432_modified": "`modified` weights instead of `centered`",
}
PEERS = {"brevitas_w4a4": ("individual_4", 4, "Brevitas, 4-bit weights and activations"),
         "torch_ao_qat8": ("individual_8", 8, "torch.ao QAT, 8 bits (x86 qconfig)")}


def cell(rows: dict[str, Any], row: str, bits: int | str, metric: str = "top1") -> str:
    entry = rows.get(row, {})
    stats = entry.get(metric, {}).get(str(bits))
    diverged = f"diverged (seed {', '.join(entry['diverged_seeds'])})" if entry.get("diverged_seeds") else ""
    if stats is None:
        return diverged or "n/a"
    return f"{_scalar(stats)}, {diverged}" if diverged else _scalar(stats)


def mean(rows: dict[str, Any], row: str, bits: int | str, metric: str = "top1") -> float | None:
    stats = rows.get(row, {}).get(metric, {}).get(str(bits))
    return None if stats is None else stats["mean"]


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _gap(rows: dict[str, Any], joint: str, bits: int, suffix: str = "") -> str:
    """Mean of the per-seed differences to the individual row (each seed's rows share a float model), then each seed's."""
    return _paired(rows, joint, f"individual_{bits}{suffix}", bits)


def _paired(rows: dict[str, Any], row: str, other: str, bits: int, other_bits: int | None = None) -> str:
    """`row` − `other` at `bits` (`other` at `other_bits`, when given): the mean, then each seed's."""
    b_bits = bits if other_bits is None else other_bits
    a, b = mean(rows, row, bits), mean(rows, other, b_bits)
    if a is None or b is None:
        return "n/a"
    seeds = rows[row]["seeds"]
    paired = [seeds[s]["top1"][str(bits)] - rows[other]["seeds"][s]["top1"][str(b_bits)]
              for s in seeds if "top1" in seeds[s] and "top1" in rows[other]["seeds"].get(s, {})]
    each = f" ({', '.join(f'{d:+.2f}' for d in paired)})" if len(paired) > 1 else ""
    return f"{a - b:+.2f}{each}"


def main_table(rows: dict[str, Any]) -> str:
    body = [["32 (float)", cell(rows, "fp", 32), "", "", "", ""]]
    for bits in (8, 6, 5, 4, 3, 2):
        high = cell(rows, "adabits_8654", bits) if bits in (8, 6, 5, 4) else ""
        low = cell(rows, "adabits_432", bits) if bits <= 4 else ""
        body.append([str(bits), cell(rows, f"individual_{bits}", bits), high,
                     _gap(rows, "adabits_8654", bits) if high else "", low,
                     _gap(rows, "adabits_432", bits) if low else ""])
    return _table(["bits", "individual", "AdaBits {8,6,5,4}", "joint − individual (per seed)", "AdaBits {4,3,2}",
                   "joint − individual (per seed)"], body)


def joint_lr_table(rows: dict[str, Any]) -> str:
    body = []
    for joint, label, bits_list, lowered in (("adabits_8654", "{8,6,5,4}", (8, 6, 5, 4), ("0.005", "_quarter_lr")),
                                             ("adabits_432", "{4,3,2}", (4, 3, 2), ("0.0067", "_third_lr"))):
        for lr, suffix in (("0.02 (the recipe's)", ""), lowered):
            for bits in bits_list:
                body.append([label, lr, str(bits), cell(rows, f"individual_{bits}{suffix}", bits),
                             cell(rows, f"{joint}{suffix}", bits), _gap(rows, f"{joint}{suffix}", bits, suffix)])
    return _table(["AdaBits model", "lr", "bits", "individual", "AdaBits", "joint − individual (per seed)"], body)


def ablation_table(rows: dict[str, Any]) -> str:
    body = [[label] + [cell(rows, row, b) for b in (4, 3, 2)] for row, label in ABLATIONS.items()]
    return _table(["{4,3,2} model", "4 bits", "3 bits", "2 bits"], body)


def adaptation_table(rows: dict[str, Any]) -> str:
    body = [[str(b), cell(rows, f"individual_{b}", b), cell(rows, "direct_adaptation", b),
             cell(rows, "direct_adaptation", b, "top1_bn_recalibrated")] for b in (8, 6, 5, 4, 3, 2)]
    return _table(["bits", "trained at these bits", "8-bit model as is", "8-bit model, BN re-calibrated"], body)


def calibration_table(rows: dict[str, Any]) -> str:
    order = [8, 7, 6, 5, 4, 3]
    values = [cell(rows, "calibrated" if b in (7, 3) else "adabits_8654", b) for b in order]
    return _table(["bits"] + [f"{b} (calibrated)" if b in (7, 3) else str(b) for b in order],
                  [["AdaBits {8,6,5,4}"] + values])


def peer_table(rows: dict[str, Any]) -> str:
    body = []
    for peer, (ours, bits, label) in PEERS.items():
        if peer not in rows:
            continue
        int8 = _scalar(rows[peer]["top1_int8"]) if "top1_int8" in rows[peer] else "n/a"
        seeds = rows[peer]["seeds"]
        paired = [rows[ours]["seeds"][s]["top1"][str(bits)] - seeds[s]["top1"] for s in seeds
                  if s in rows.get(ours, {}).get("seeds", {})]
        body.append([label, str(bits), cell(rows, ours, bits), _scalar(rows[peer]["top1"]), int8,
                     ", ".join(f"{d:+.2f}" for d in paired) or "n/a"])
    return _table(["peer", "bits", "adabits, trained at these bits", "peer (fake-quant)", "peer as int8 model",
                   "adabits − peer, per seed"], body)


#: the joint step's options (docs/training.md): row suffix -> label
DISTILL = {"mean": "`mean`, no distillation", "mean_distill_highest": "taught by the highest",
           "mean_distill_recursive": "recursive", "mean_distill_float": "taught by the float model",
           "mean_distill_float_half": "taught by the float model, distill_weight 0.5"}
SEVEN_BITS = (8, 7, 6, 5, 4, 3, 2)


def distill_table(rows: dict[str, Any], name: str, bits_list: tuple[int, ...]) -> str:
    """Per bit-width: the individual row, then each joint variant as top-1 and its paired gap to it."""
    variants = [(f"adabits_{name}_{suffix}", label) for suffix, label in DISTILL.items()
                if f"adabits_{name}_{suffix}" in rows]
    body = [[str(b), cell(rows, "stage1", 32), cell(rows, f"individual_{b}", b),
             *(f"{cell(rows, row, b)}; {_gap(rows, row, b)}" for row, _ in variants)] for b in bits_list]
    return _table(["bits", "float model (stage 1)", "individual",
                   *(f"{label}: top-1; − individual (per seed)" for _, label in variants)], body)


def loss_reduction_table(rows: dict[str, Any]) -> str:
    """`mean` at the table's lr against `sum` at that lr divided by the number of bit-widths."""
    body = [[str(b), cell(rows, "adabits_432_mean", b), cell(rows, "adabits_432_third_lr", b),
             _paired(rows, "adabits_432_mean", "adabits_432_third_lr", b)] for b in (4, 3, 2)]
    return _table(["bits", "{4,3,2}, `mean` at lr 0.02", "{4,3,2}, `sum` at lr 0.0067", "mean − sum (per seed)"],
                  body)


def sandwich_table(rows: dict[str, Any]) -> str:
    full, sampled = "adabits_7bits_mean", "adabits_7bits_mean_sandwich1"
    body = [[str(b), cell(rows, full, b), cell(rows, sampled, b), _paired(rows, sampled, full, b)]
            for b in SEVEN_BITS]
    return _table(["bits", "all 7 per step (7 single-bit steps)", "sandwich, K = 1 (3 single-bit steps)",
                   "sampled − all (per seed)"], body)


def _scalar(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.2f} ± {stats['half_range']:.2f}" if stats["n"] > 1 else f"{stats['mean']:.2f}"


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    seeds = results["recipe"]["seeds"]
    images = f"first {results['recipe']['quick_test_images']:,}" if results["recipe"].get("quick") else "10,000"
    parts = [f"Top-1 (%) on the {images} Fashion-MNIST test images, mean ± half the range over seeds {seeds}."]
    # (title, table, the row or rows it needs): a results file of some rows (--rows) shows the sections it has
    sections = [
        ("## Individual vs joint", main_table, "adabits_8654"),
        ("## Ablations, {4,3,2}", ablation_table, "adabits_432_no_switchbn"),
        ("## The joint model's learning rate", joint_lr_table, "adabits_8654_quarter_lr"),
        ("## Direct adaptation of an 8-bit model", adaptation_table, "direct_adaptation"),
        ("## Bit-widths never trained, after BN calibration", calibration_table, "calibrated"),
        ("## The joint step's options: {4,3,2}", lambda r: distill_table(r, "432", (4, 3, 2)), "adabits_432_mean"),
        ("## The joint step's options: {8,6,5,4}", lambda r: distill_table(r, "8654", (8, 6, 5, 4)),
         "adabits_8654_mean"),
        ("## `mean` against `sum` at lr / N", loss_reduction_table, ("adabits_432_mean", "adabits_432_third_lr")),
        ("## Seven bit-widths: every one per step, or the sandwich rule", sandwich_table, "adabits_7bits_mean"),
    ]
    for title, table, needs in sections:
        if all(row in rows for row in ((needs,) if isinstance(needs, str) else needs)):
            parts += [title, table(rows)]
    if any(p in rows for p in PEERS):
        parts += ["## Peers", peer_table(rows)]
    return "\n\n".join(parts) + "\n"
