"""Model registry (timm's pattern): families register constructors, users create by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from ..quant.config import QuantConfig

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: ModelFn, name: str | None = None) -> ModelFn:
    """Register a constructor (a function or a model class) under `name`, by default its own name.

    It takes bits_list, config and the model's options as keyword arguments.
    """
    name = name or fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_options(name: str) -> frozenset[str]:
    """The options a registered model's constructor takes besides bits_list and config (its own, not QuantConfig's)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return frozenset(inspect.signature(_MODELS[name]).parameters) - {"bits_list", "config"}


def create_model(
    name: str,
    bits_list: Iterable[object] = (32,),
    num_classes: int | None = None,
    in_chans: int | None = None,
    config: QuantConfig | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model. `options` may hold QuantConfig fields and the model's own options."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    fn = _MODELS[name]
    quant_options, own_options = QuantConfig.split_options(options)
    config = (config or QuantConfig()).updated(**quant_options)
    accepted = model_options(name)
    unknown = set(own_options) - accepted
    if unknown:
        allowed = sorted(accepted | QuantConfig.field_names())
        raise ValueError(f"model {name!r} has no option(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    if num_classes is not None:
        own_options["num_classes"] = num_classes
    if in_chans is not None:
        own_options["in_chans"] = in_chans
    return fn(bits_list=list(bits_list), config=config, **own_options)
