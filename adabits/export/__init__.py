"""Deploying a trained model: one packed file for every bit-width, and ONNX graphs for integer runtimes."""
from .packed import load_packed, save_packed

__all__ = ["load_packed", "save_packed"]
