"""Model families; importing this package registers them."""

from . import resnet_cifar  # noqa: F401  (registers the CIFAR ResNets)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
