"""Quantization: pure functions, switchable layers, bit-width switching, model conversion.

Imports only torch: it knows nothing of training, data or config files.
"""

from .bitwidth import get_bits, get_bits_list, set_bits, use_bits
from .calibrate import add_bits, calibrate_bn, recalibrate_bn
from .config import QuantConfig
from .convert import load_fp_state_dict, quantize_model
from .layers import QConv2d, QLinear, SwitchBatchNorm2d

__all__ = [
    "QConv2d", "QLinear", "QuantConfig", "SwitchBatchNorm2d", "add_bits", "calibrate_bn", "get_bits", "get_bits_list",
    "load_fp_state_dict", "quantize_model", "recalibrate_bn", "set_bits", "use_bits",
]
