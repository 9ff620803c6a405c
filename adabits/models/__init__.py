"""Model families; importing this package registers them."""

from . import mobilenet_v1, mobilenet_v2, resnet, resnet_cifar, vit  # noqa: F401  (register the families)
from .checkpoint_keys import remap_state_dict
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "remap_state_dict"]
