"""Deploying a trained model: `export_model` (any converted model to a `.pte`, ONNX or one packed file of every
bit-width; also `adabits.export_model`), and `load_packed` / `save_packed` for the packed file.

The call is `export_model`, not `export`: `adabits.export` is this subpackage (model_export.py says more)."""
from .model_export import Exported, export_model
from .packed import load_packed, save_packed

__all__ = ["Exported", "export_model", "load_packed", "save_packed"]
