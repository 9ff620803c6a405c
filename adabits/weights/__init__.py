"""Weights into a model: `load_weights` (the one pipeline, load.py), its report, and the file reader."""
from .files import read_checkpoint, state_dict_of
from .fit import WeightsMismatch
from .load import LoadReport, load_weights

__all__ = ["LoadReport", "WeightsMismatch", "load_weights", "read_checkpoint", "state_dict_of"]
