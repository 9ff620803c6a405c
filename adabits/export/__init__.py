"""Deploying a trained model: `export_model` (any converted model to a `.pte` or ONNX), and one packed file for every
bit-width of a registered model."""
from .model_export import Exported, export_model
from .packed import load_packed, save_packed

__all__ = ["Exported", "export_model", "load_packed", "save_packed"]
