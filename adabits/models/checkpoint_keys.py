"""Renaming the keys of foreign checkpoints to this project's module names, in one place.

- torchvision: ResNet-18/34/50 and MobileNet V2 use torchvision's names already (conv1, layer1.0.conv1,
  downsample.0, fc; features.N.conv.M, classifier.1), so their state dicts need no renaming; a
  plain BatchNorm's keys spread into every per-bit BN when loaded (SwitchBatchNorm2d).
- the original AdaBits code: its MobileNets named modules head / stage_I_layer_J.body.K / tail /
  classifier.0; those are renamed to ours here.
- wrappers: `module.` (DataParallel) and `_orig_mod.` (torch.compile) prefixes are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

from . import mobilenet_v1, mobilenet_v2

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_ORIGINAL_BLOCK = re.compile(r"stage_(\d+)_layer_(\d+)\.body\.(\d+)\.(.+)")
_ORIGINAL_EDGE = re.compile(r"(head|tail)\.(\d+)\.(.+)")
#: the original's body index in an inverted residual -> torchvision's `conv` index, with and without expansion
_V2_BODY_EXPANDED = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
_V2_BODY_NO_EXPANSION = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _feature_index(repeats: list[int], stage: int, layer: int) -> int:
    """Position in `features` of the original's stage_{stage}_layer_{layer} (features.0 is the stem)."""
    if stage >= len(repeats) or layer >= repeats[stage]:
        raise ValueError(f"stage_{stage}_layer_{layer} does not exist in this model")
    return 1 + sum(repeats[:stage]) + layer


def _original_mobilenet_key(key: str, repeats: list[int], body_index: Callable[[int, int], str]) -> str:
    if key.startswith("classifier.0."):
        return "classifier.1." + key[len("classifier.0."):]
    edge = _ORIGINAL_EDGE.fullmatch(key)
    if edge:
        part, index, rest = edge.groups()
        feature = 0 if part == "head" else 1 + sum(repeats)
        return f"features.{feature}.{index}.{rest}"
    block = _ORIGINAL_BLOCK.fullmatch(key)
    if block:
        stage, layer, index, rest = block.groups()
        return f"features.{_feature_index(repeats, int(stage), int(layer))}.{body_index(int(stage), int(index))}.{rest}"
    return key


def _original_mobilenet_v1_key(key: str) -> str:
    repeats = [n for _, n, _ in mobilenet_v1.BLOCK_SETTING]
    return _original_mobilenet_key(key, repeats, lambda stage, index: str(index))


def _original_mobilenet_v2_key(key: str) -> str:
    setting = mobilenet_v2.INVERTED_RESIDUAL_SETTING
    repeats = [n for _, _, n, _ in setting]

    def body_index(stage: int, index: int) -> str:
        table = _V2_BODY_EXPANDED if setting[stage][0] != 1 else _V2_BODY_NO_EXPANSION
        if index not in table:
            raise ValueError(f"stage_{stage} body.{index} holds no weights in the original MobileNet V2")
        return "conv." + table[index]

    return _original_mobilenet_key(key, repeats, body_index)


#: model class name -> key renaming of the foreign layouts it accepts
KEY_MAPS: dict[str, Callable[[str], str]] = {
    "MobileNetV1": _original_mobilenet_v1_key,
    "MobileNetV2": _original_mobilenet_v2_key,
}


def remap_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with its keys renamed to `model`'s names (see the module docstring for the layouts)."""
    rename = KEY_MAPS.get(type(model).__name__, lambda key: key)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = rename(_strip_wrappers(key))
        if new in renamed:
            raise ValueError(f"checkpoint keys collide after renaming: two keys become {new!r} (one is {key!r})")
        renamed[new] = value
    return renamed
