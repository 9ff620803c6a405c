"""Turn any nn.Module into a switchable quantized one, and load float checkpoints into it."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import QuantOptionError
from .attention import QMultiheadAttention
from .bitwidth import max_bits, parse_bits_list
from .calibration import calibrate, calibration_inputs
from .config import QuantConfig
from .layers import AUTO_SIDE, ClippingSide, QConv2d, QLinear, QuantLayer, SwitchBatchNorm2d
from .norms import SWITCHABLE_NORMS, SwitchableNorm, SwitchNorm, has_state
from .report import conversion_report
from .residual import Int8Observer

LAYER_OPTIONS = frozenset({"bitw_min", "bita_min", "weight_only", "pact_fp", "double_side", "quantize"})


def default_layer_policy(model: nn.Module, bits_list: Iterable[object]) -> dict[str, dict[str, Any]]:
    """The papers' first/last-layer policy (AdaBits, SAT) for an arbitrary model: the first conv/linear
    is weight-only and keeps the highest bits (at least 8), with 8-bit input clipping; the last linear
    keeps the highest bits."""
    keep = max(max_bits(bits_list), 8)
    inside_attention = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in inside_attention]
    names = [n for n, _ in layers]
    if not names:
        return {}
    policy: dict[str, dict[str, Any]] = {names[0]: {"weight_only": True, "bitw_min": keep, "bita_min": 8}}
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else names[-1]
    if last != names[0]:
        policy[last] = {"bitw_min": keep}
    return policy


def _quantized_twin(module: nn.Module, bits_list: tuple, config: QuantConfig, options: dict[str, Any]) -> nn.Module:
    """A quantized copy of one float layer, holding the same weights, on the same device and dtype."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.MultiheadAttention):
        weight = module.out_proj.weight
    factory = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
    if isinstance(module, nn.Conv2d):
        twin: nn.Module = QConv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, module.bias is not None, module.padding_mode,
            bits_list=bits_list, config=config, **options, **factory,
        )
    elif isinstance(module, nn.MultiheadAttention):
        if module.bias_k is not None or module.add_zero_attn:
            raise QuantOptionError("nn.MultiheadAttention with add_bias_kv or add_zero_attn has no quantized twin; "
                                   "keep it in float with layer_options {name: {'quantize': False}}")
        twin = QMultiheadAttention(
            module.embed_dim, module.num_heads, module.dropout, module.in_proj_bias is not None or
            module.out_proj.bias is not None, module.batch_first, module.kdim, module.vdim,
            bits_list=bits_list, config=config, **options, **factory,
        )
    elif isinstance(module, SWITCHABLE_NORMS):
        twin = SwitchNorm(module, bits_list=bits_list, shared=not config.switchbn)
    elif isinstance(module, nn.Linear):
        twin = QLinear(
            module.in_features, module.out_features, module.bias is not None,
            bits_list=bits_list, config=config, **options, **factory,
        )
    else:
        bn = module
        assert isinstance(bn, nn.BatchNorm2d)
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("quantize_model supports BatchNorm2d with affine=True and track_running_stats=True")
        twin = SwitchBatchNorm2d(
            bn.num_features, bn.eps, bn.momentum, bits_list=bits_list, switchbn=config.switchbn,
            stats_sharing=config.stats_sharing, **factory,
        )
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin


def _is_float_layer(module: nn.Module) -> bool:
    quantized = (QConv2d, QLinear, SwitchBatchNorm2d)
    float_layers = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MultiheadAttention, *SWITCHABLE_NORMS)
    return isinstance(module, float_layers) and not isinstance(module, quantized)


def _without_fast_paths(model: nn.Module) -> None:
    """Turn off the fused inference paths of torch's transformer modules, which read the float weights
    directly and never call the quantized layers' forward: eval then computes what training does."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
        if isinstance(module, nn.TransformerEncoderLayer):
            module.activation_relu_or_gelu = 0  # torch reads this flag for its fast path only


def quantize_model(
    model: nn.Module,
    bits_list: Iterable[object],
    config: QuantConfig | None = None,
    *,
    layer_options: Mapping[str, Mapping[str, Any]] | None = None,
    first_last_policy: bool = True,
    double_side: ClippingSide = AUTO_SIDE,
    calibration: Iterable[object] | None = None,
) -> nn.Module:
    """Swap every Conv2d, Linear, BatchNorm2d, MultiheadAttention, LayerNorm, GroupNorm, RMSNorm and
    BatchNorm1d of `model` for its switchable quantized twin, in place (the norms other than
    BatchNorm2d become `SwitchNorm`: one copy per bit-width, or one shared without `config.switchbn`).

    `layer_options` maps module names to per-layer options (bitw_min, bita_min, weight_only, pact_fp,
    double_side; `quantize: False` keeps that layer in float). They override the first/last-layer
    policy of `default_layer_policy`, which `first_last_policy=False` turns off. `double_side` is
    every layer's clipping side unless its layer_options say otherwise: "auto" (the default) chooses
    it from the layer's first input (`QuantLayer.choose_side`: two-sided after LayerNorm or attention,
    one-sided after ReLU); `config.double_side=True` makes "auto" two-sided everywhere. Warns naming
    each layer that computes with a float weight and has no quantized twin (`conversion_report`).

    `calibration` (an iterable of input batches, or a DataLoader) starts from a pretrained float model:
    the config then defaults to `QuantConfig.pretrained()` (weights on their own per-channel scale), and
    every bit-width is calibrated on the batches (`adabits.calibrate`: clipping levels and BN statistics
    per bit-width, no training), so the model computes nearly what the float one did; the conversion
    report then shows how far each layer's output moved. Without it, the seed's recipe is unchanged.
    Returns the model (a new module when `model` itself is a single layer).
    """
    bits = parse_bits_list(bits_list)
    inputs = None if calibration is None else calibration_inputs(calibration)
    config = config or (QuantConfig() if inputs is None else QuantConfig.pretrained())
    if config.quantize_residual:
        raise QuantOptionError("quantize_residual places 8-bit observers in the residual blocks of the registered "
                               "models (ResNets, MobileNet V2); quantize_model cannot find the residual stream of an "
                               "arbitrary model (its integer export calibrates those grids instead)")
    options: dict[str, dict[str, Any]] = default_layer_policy(model, bits) if first_last_policy else {}
    names = dict(model.named_modules())
    for name, extra in (layer_options or {}).items():
        if name not in names:
            raise ValueError(f"layer_options names {name!r}, which is not a module of {type(model).__name__}")
        unknown = set(extra) - LAYER_OPTIONS
        if unknown:
            raise ValueError(f"layer_options[{name!r}] has unknown options {sorted(unknown)}; allowed: {sorted(LAYER_OPTIONS)}")
        options[name] = {**options.get(name, {}), **extra}

    # an attention's out_proj is multiplied by F.multi_head_attention_forward, never called: the twin replaces it
    attention = [f"{n}." for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, module in list(model.named_modules()):
        if not _is_float_layer(module) or any(name.startswith(prefix) for prefix in attention):
            continue
        layer = dict(options.get(name, {}))
        if not layer.pop("quantize", True):
            continue
        if isinstance(module, SWITCHABLE_NORMS) and not has_state(module):
            continue  # nothing a per-bit copy could differ in: it stays the float norm
        if isinstance(module, (nn.BatchNorm2d, *SWITCHABLE_NORMS)):
            layer = {}
        else:
            layer.setdefault("double_side", True if config.double_side and double_side == AUTO_SIDE else double_side)
        twin = _quantized_twin(module, bits, config, layer)
        if not name:
            model = twin
            break
        parent_name, _, child = name.rpartition(".")
        setattr(names[parent_name] if parent_name else model, child, twin)
    _without_fast_paths(model)
    excluded = [name for name, extra in options.items() if not extra.get("quantize", True)]
    for name in conversion_report(model, excluded).float_paths:
        warnings.warn(f"quantize_model: {name} ({type(names[name]).__name__}) computes with a float weight that has "
                      f"no quantized twin; exclude it with layer_options {{{name!r}: {{'quantize': False}}}} to keep "
                      "it in float on purpose, or replace it", stacklevel=2)
    if inputs is not None:
        calibrate(model, inputs)
    return model


def adapt_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` as `model.load_state_dict` sees it once each layer has adapted its part (a plain
    BN spread into every per-bit BN, one alpha into every per-bit alpha; `adapt_state_dict` of the
    layers, which their load hooks also call): keys and shapes to compare with `model.state_dict()`
    before anything is loaded."""
    state = dict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, (QuantLayer, SwitchableNorm, QMultiheadAttention)):
            module.adapt_state_dict(state, f"{name}." if name else "")
    return state


def spread_fp_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full-precision checkpoint made to fit a switchable model: each float norm (or the single copy
    of a one-bit-width model, `bn.0` / `norms.0` alone) goes into every per-bit copy, each single alpha into every
    per-bit alpha (`adapt_state_dict`); the 8-bit observers keep their unset ranges, which the first
    training batches set."""
    state = dict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, Int8Observer):
            state.setdefault(f"{name}.ranges" if name else "ranges", module.ranges.clone())
        if not isinstance(module, SwitchableNorm) or module.shared:
            continue
        copies, probe = f"{module.copies_name}.", next(iter(module.copies[0].state_dict()))
        prefix = f"{name}.{copies}" if name else copies
        if f"{prefix}0.{probe}" in state and f"{prefix}1.{probe}" not in state:
            for key in [k for k in state if k.startswith(prefix + "0.")]:
                state[prefix[: -len(copies)] + key[len(prefix) + 2 :]] = state.pop(key)
    return adapt_state_dict(model, state)


def load_fp_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Any:
    """Load a full-precision checkpoint into a switchable model (`spread_fp_state_dict`).
    Returns torch's (missing_keys, unexpected_keys)."""
    return model.load_state_dict(spread_fp_state_dict(model, state_dict), strict=False)
