"""Renaming the keys of foreign checkpoints to this project's module names, in one place.

- torchvision: ResNet-18/34/50 and MobileNet V2 use torchvision's names already (conv1, layer1.0.conv1,
  downsample.0, fc; features.N.conv.M, classifier.1), so their state dicts need no renaming; a
  plain BatchNorm's keys spread into every per-bit BN when loaded (SwitchBatchNorm2d).
- the original AdaBits code: its models named modules head / stage_I_layer_J.body.K (and .shortcut.K
  in the CIFAR ResNet) / tail / classifier.0; those are renamed to ours here. Its first conv held a
  clipping level it never used (the conv is weight-only, as ours, which has none): `head.0.alpha` is
  dropped. A CIFAR ResNet's blocks per stage are read from the checkpoint's own keys, so an original
  checkpoint of another depth becomes our layout of that depth (and then does not fit, naming it).

Wrapper prefixes (`module.`, `_orig_mod.`) are gone before this stage: `adabits.weights.files.state_dict_of`
strips them (the "clean" stage of `adabits.load_weights`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping

import torch
from torch import nn

from . import mobilenet_v1, mobilenet_v2

#: the original's first conv is weight-only: its clipping level was never used, and ours has none
_ORIGINAL_UNUSED = frozenset({"head.0.alpha"})
_ORIGINAL_BLOCK = re.compile(r"stage_(\d+)_layer_(\d+)\.body\.(\d+)\.(.+)")
_ORIGINAL_SHORTCUT = re.compile(r"stage_(\d+)_layer_(\d+)\.shortcut\.(\d+)\.(.+)")
_ORIGINAL_EDGE = re.compile(r"(head|tail)\.(\d+)\.(.+)")
#: the original's body index in an inverted residual -> torchvision's `conv` index, with and without expansion
_V2_BODY_EXPANDED = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
_V2_BODY_NO_EXPANSION = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
#: the original CIFAR ResNet: head.K -> our stem, body.K of a block -> our BasicBlock's module
_RESNET_HEAD = {0: "conv1", 1: "bn1"}
_RESNET_BODY = {0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2"}

#: a renaming of one key; None drops it
Rename = Callable[[str], str | None]


def _feature_index(repeats: list[int], stage: int, layer: int) -> int:
    """Position in `features` of the original's stage_{stage}_layer_{layer} (features.0 is the stem)."""
    if stage >= len(repeats) or layer >= repeats[stage]:
        raise ValueError(f"stage_{stage}_layer_{layer} does not exist in this model")
    return 1 + sum(repeats[:stage]) + layer


def _original_mobilenet_key(key: str, repeats: list[int], body_index: Callable[[int, int], str]) -> str | None:
    if key in _ORIGINAL_UNUSED:
        return None
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


def _original_mobilenet_v1(keys: Collection[str]) -> Rename:
    repeats = [n for _, n, _ in mobilenet_v1.BLOCK_SETTING]
    return lambda key: _original_mobilenet_key(key, repeats, lambda stage, index: str(index))


def _original_mobilenet_v2(keys: Collection[str]) -> Rename:
    setting = mobilenet_v2.INVERTED_RESIDUAL_SETTING
    repeats = [n for _, _, n, _ in setting]

    def body_index(stage: int, index: int) -> str:
        table = _V2_BODY_EXPANDED if setting[stage][0] != 1 else _V2_BODY_NO_EXPANSION
        if index not in table:
            raise ValueError(f"stage_{stage} body.{index} holds no weights in the original MobileNet V2")
        return "conv." + table[index]

    return lambda key: _original_mobilenet_key(key, repeats, body_index)


def _module(table: dict[int, str], index: str, where: str) -> str:
    if int(index) not in table:
        raise ValueError(f"{where}.{index} holds no weights in the original CIFAR ResNet")
    return table[int(index)]


def _original_resnet_cifar(keys: Collection[str]) -> Rename:
    """The original's q_resnet_cifar; its blocks per stage (depth = 6 n + 2) come from `keys`."""
    layers = [int(m.group(2)) for m in map(re.compile(r"stage_(\d+)_layer_(\d+)\.").match, keys) if m]
    blocks = 1 + max(layers, default=0)

    def rename(key: str) -> str | None:
        if key in _ORIGINAL_UNUSED:
            return None
        if key.startswith("classifier.0."):
            return "fc." + key[len("classifier.0."):]
        edge = _ORIGINAL_EDGE.fullmatch(key)
        if edge and edge.group(1) == "head":
            return f"{_module(_RESNET_HEAD, edge.group(2), 'head')}.{edge.group(3)}"
        block = _ORIGINAL_BLOCK.fullmatch(key) or _ORIGINAL_SHORTCUT.fullmatch(key)
        if block:
            stage, layer, index, rest = block.groups()
            position = int(stage) * blocks + int(layer)
            if block.re is _ORIGINAL_SHORTCUT:
                return f"layers.{position}.shortcut.{index}.{rest}"
            return f"layers.{position}.{_module(_RESNET_BODY, index, 'body')}.{rest}"
        return key

    return rename


#: model class name -> the renaming (built from the checkpoint's keys) of the foreign layouts it accepts
KEY_MAPS: dict[str, Callable[[Collection[str]], Rename]] = {
    "MobileNetV1": _original_mobilenet_v1,
    "MobileNetV2": _original_mobilenet_v2,
    "CifarResNet": _original_resnet_cifar,
}


def _keep(key: str) -> str | None:
    return key


def remap_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with its keys renamed to `model`'s names (see the module docstring for the layouts)."""
    factory = KEY_MAPS.get(type(model).__name__)
    rename = factory(list(state_dict)) if factory else _keep
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            continue
        if new in renamed:
            raise ValueError(f"checkpoint keys collide after renaming: two keys become {new!r} (one is {key!r})")
        renamed[new] = value
    return renamed
