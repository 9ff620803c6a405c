"""`adabits.load_weights`: every way weights reach a model, as one pipeline.

    read -> clean -> remap -> adapt -> fit -> load

- read: a file (`files.read_checkpoint`, digests checked) or a dict already in memory;
- clean: the state dict inside it, wrapper prefixes stripped (`files.state_dict_of`);
- remap: a foreign layout's keys renamed to the model's (`adabits.models.remap_state_dict`: the original
  AdaBits code's models; torchvision's names are ours already);
- adapt: what each layer makes of its part (a float BN spread into every per-bit BN, one clipping level
  into every per-bit one); a float start (`from_float`) also fills the per-bit copies of a one-copy
  checkpoint; bit-widths calibrated into the file (`adabits calibrate`) are added to the model first;
- fit: every model key gets a value of its shape and no file key is left over, or `WeightsMismatch` says
  which keys do not fit (and what the file looks written for); `partial=True` loads the keys that fit.

The trainer's start and resume, `adabits test` / `export` / `calibrate` / `profile`, the float teacher and
a user's own loop all call this one function.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from torch import nn

from ..errors import CheckpointError
from ..models.checkpoint_keys import remap_state_dict
from ..quant.bitwidth import Bits, bits_text, get_bits_list
from ..quant.bn_calibration import add_bits
from ..quant.convert import adapt_state_dict, spread_fp_state_dict
from . import fit
from .files import read_checkpoint, state_dict_of

#: the checkpoint key listing the bit-widths `adabits calibrate` added to a model
CALIBRATED_KEY = "calibrated_bits"


@dataclass(frozen=True)
class LoadReport:
    """What `load_weights` loaded: `loaded` of `model_keys` keys; after a partial load, what was left out."""

    source: str
    loaded: int
    model_keys: int
    from_float: bool = False
    calibrated_bits: list[Bits] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        what = "full-precision weights" if self.from_float else "weights"
        text = f"loaded {what} from {self.source}"
        if self.calibrated_bits:
            text += f" (calibrated bit-widths {bits_text(self.calibrated_bits, 'config')})"
        if not self.complete:
            text += (f" (partial_load: {self.loaded} of {self.model_keys} model keys loaded; {len(self.missing)} got "
                     f"no value, {len(self.mismatched)} with other shapes and {len(self.unexpected)} unknown "
                     "checkpoint keys skipped)")
        return text


def load_weights(model: nn.Module, source: str | PathLike[str] | Mapping[str, Any], *, from_float: bool = False,
                 partial: bool = False, name: str | None = None) -> LoadReport:
    """Load `source` (a file torch.save wrote, a checkpoint dict or a state dict) into `model`.

    `from_float`: the weights of the float model this one was converted from (every bit-width starts from
    them). `partial`: load the keys that fit and report the rest, instead of refusing. `name` is how errors
    name a dict source (a file names itself). Raises CheckpointError (`fit.WeightsMismatch` when the keys do
    not fit) with one line naming the source.
    """
    if isinstance(source, Mapping):
        where, ckpt = name or "the state dict", dict(source)
    else:
        where, ckpt = str(source), read_checkpoint(source)
    calibrated = [] if from_float else _grow_calibrated_bits(model, ckpt, where)
    own = _remap(model, state_dict_of(ckpt, where), where)
    if from_float:
        fit.refuse_other_bit_count(model, own, where)
    adapted = spread_fp_state_dict(model, own) if from_float else adapt_state_dict(model, own)
    result = fit.compare(model, adapted)
    if not result.complete and (not partial or result.shares_nothing):
        fit.refuse_misfit(model, result, where, fit.written_for(model, own, ckpt))
    model.load_state_dict(result.loadable, strict=result.complete)
    return LoadReport(where, len(result.loadable), result.model_keys, from_float, calibrated, result.missing,
                      result.unexpected, [key for key, _, _ in result.mismatched])


def _grow_calibrated_bits(model: nn.Module, ckpt: Mapping[str, Any], where: str) -> list[Bits]:
    """Give `model` the per-bit BN and clipping entries of the bit-widths calibrated into `ckpt`, so that it
    loads strictly; returns those bit-widths."""
    calibrated = ckpt.get(CALIBRATED_KEY, [])
    if not isinstance(calibrated, (list, tuple)):
        raise CheckpointError(f"{where}: the field '{CALIBRATED_KEY}' is a {type(calibrated).__name__}, not a list "
                              "of bit-widths; the file is damaged or was not written by adabits")
    have = get_bits_list(model)
    try:
        for bits in calibrated:
            if bits not in have:
                add_bits(model, bits)
    except ValueError as exc:
        raise CheckpointError(f"{where}: cannot add its calibrated bit-width(s) to the model: {exc}") from None
    return list(calibrated)


def _remap(model: nn.Module, state: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return remap_state_dict(model, state)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None

