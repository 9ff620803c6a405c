"""Whether a checkpoint's weights fit a model, before anything is loaded, said in one line.

A load that gives every model key a value of the model's shape, and leaves no checkpoint key
unused, is complete. Anything less is a CheckpointError naming a few keys and the counts (and what
the checkpoint looks written for, when its keys tell), unless the user asked for a partial load.
`num_batches_tracked` is never missing: torch fills it (it only counts batches).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..quant.bitwidth import bits_text, get_bits_list
from ..quant.layers import QuantLayer
from ..quant.norms import SwitchableNorm

#: keys named in a message, of each kind
SHOWN = 3
_FILLED_BY_TORCH = "num_batches_tracked"
#: the method a model may define to say what a state dict of its family looks written for (e.g. another
#: depth): `layout_hint(state) -> str | None`, asked when a checkpoint does not fit
LAYOUT_HINT = "layout_hint"


@dataclass(frozen=True)
class Fit:
    """A state dict (already in the model's names and adapted to its layers) against the model."""

    loadable: dict[str, torch.Tensor]  # model keys with a value of the model's shape
    missing: list[str]  # model keys that get no value
    unexpected: list[str]  # checkpoint keys the model does not have
    mismatched: list[tuple[str, torch.Size, torch.Size]]  # (key, checkpoint shape, model shape)
    model_keys: int

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def shares_nothing(self) -> bool:
        return not any(not key.endswith(_FILLED_BY_TORCH) for key in self.loadable)


def compare(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Fit:
    own = model.state_dict()
    loadable, mismatched = {}, []
    for key, value in state.items():
        if key in own:
            if value.shape == own[key].shape:
                loadable[key] = value
            else:
                mismatched.append((key, value.shape, own[key].shape))
    missing = [k for k in own if k not in state and not k.endswith(_FILLED_BY_TORCH)]
    unexpected = [k for k in state if k not in own]
    return Fit(loadable, missing, unexpected, mismatched, len(own))


def per_bit_bn_counts(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Switchable norms for which the checkpoint holds per-bit copies (more than one): name -> (held, model's)."""
    counts = {}
    for name, module in model.named_modules():
        if isinstance(module, SwitchableNorm):
            key = module.copies_name
            held = _per_bit_indices(state, f"{name}.{key}." if name else f"{key}.")
            if len(held) > 1:
                counts[name] = (len(held), len(module.copies))
    return counts


class WeightsMismatch(CheckpointError):
    """A state dict that fits only part of the model; `partial_possible`: some keys fit, so a partial load could
    take them (callers that offer one say how: `partial=True`, or a config's partial_load)."""

    def __init__(self, message: str, partial_possible: bool) -> None:
        super().__init__(message)
        self.partial_possible = partial_possible


def refuse_other_bit_count(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """A float start spreads one BN into every bit-width; a switchable checkpoint of another bit count has no such BN."""
    for name, (held, have) in per_bit_bn_counts(model, state).items():
        if held != have:
            raise CheckpointError(
                f"{path} holds {held} per-bit norms per layer (e.g. {name}: a switchable checkpoint of {held} bit-widths), "
                f"this model has {have} (bits_list {bits_text(get_bits_list(model), 'config')}); a float start (from_float, "
                "fp_pretrained_file) spreads one float norm into every bit-width: load a switchable checkpoint "
                "as pretrained_file (not from_float) into a model of the bits_list it was written for, or add bit-widths to it with `adabits calibrate`")


def refuse_misfit(model: nn.Module, fit: Fit, path: str, hint: str | None) -> None:
    """The one line for a checkpoint that fits only part of the model, naming a few keys of each kind."""
    if fit.shares_nothing:
        raise WeightsMismatch(f"{path} shares no parameter names with model {type(model).__name__}"
                              + (f"; it looks written for {hint}" if hint else ""), partial_possible=False)
    parts = []
    if fit.mismatched:
        shapes = [f"{key}: checkpoint {_shape(a)}, model {_shape(b)}" for key, a, b in fit.mismatched]
        parts.append(f"{len(shapes)} keys have other shapes ({_some(shapes, '; ')})")
    if fit.missing:
        parts.append(f"{len(fit.missing)} model keys get no value ({_some(fit.missing)})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} checkpoint keys are not in the model ({_some(fit.unexpected)})")
    raise WeightsMismatch(f"{path} does not fit model {type(model).__name__}: " + "; ".join(parts)
                          + (f"; the checkpoint looks written for {hint}" if hint else ""), partial_possible=True)


def partial_note(fit: Fit) -> str:
    return (f"partial_load: {len(fit.loadable)} of {fit.model_keys} model keys loaded; {len(fit.missing)} got no "
            f"value, {len(fit.mismatched)} with other shapes and {len(fit.unexpected)} unknown checkpoint keys skipped")


def written_for(model: nn.Module, state: Mapping[str, torch.Tensor], ckpt: Mapping[str, Any]) -> str | None:
    """What the checkpoint looks written for where that differs from `model`: our checkpoints' record
    of model and bits_list, else the bit count of its per-bit BNs and alphas, and the model's own `layout_hint`."""
    parts = []
    if isinstance(ckpt.get("model_name"), str) and "bits_list" in ckpt:
        parts.append(f"model {ckpt['model_name']} with bits_list {bits_text(ckpt['bits_list'], 'config')}")
    else:
        held = _bit_count(model, state)
        have = len(get_bits_list(model))
        if held is not None and held != have:
            parts.append(f"a bits_list of {held} bit-widths (this model has {have})")
    hint = getattr(model, LAYOUT_HINT, None)
    if callable(hint) and (said := hint(state)):
        parts.append(said)
    return ", ".join(parts) or None


def _bit_count(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The bit-widths a switchable checkpoint was trained at, from its per-bit BNs or alphas (None for a float one)."""
    counts = [held for held, _ in per_bit_bn_counts(model, state).values()]
    for name, module in model.named_modules():
        alpha = state.get(f"{name}.alpha" if name else "alpha")
        if isinstance(module, QuantLayer) and alpha is not None and alpha.numel() > 1:
            counts.append(alpha.numel())
    return max(counts) if counts else None


def _per_bit_indices(keys: Iterable[str], prefix: str) -> set[int]:
    """The I of every `{prefix}I.*` key."""
    heads = (key[len(prefix):].partition(".")[0] for key in keys if key.startswith(prefix))
    return {int(head) for head in heads if head.isdigit()}


def _shape(size: torch.Size) -> str:
    return "[" + ",".join(map(str, size)) + "]"


def _some(items: Sequence[str], sep: str = ", ") -> str:
    return sep.join(items[:SHOWN]) + (f"{sep}..." if len(items) > SHOWN else "")
