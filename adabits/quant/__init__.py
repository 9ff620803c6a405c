"""Quantization: pure functions, switchable layers, bit-width switching, model conversion.

Imports only torch (and adabits.errors, which imports nothing): it knows nothing of training, data
or config files. `QuantLayer` and `SwitchBatchNorm2d` are the contract everything else reads.
"""

from .attention import QMultiheadAttention
from .bitwidth import get_bits, get_bits_list, set_bits, use_bits
from .bn_calibration import add_bits, calibrate_bn, recalibrate_bn
from .calibration import CalibrationReport, calibrate
from .config import QuantConfig
from .convert import load_fp_state_dict, quantize_model
from .layers import QConv2d, QLinear, QuantLayer, SwitchBatchNorm2d, compile_quantizers
from .norms import SwitchNorm
from .report import ConversionReport, conversion_report
from .schemes import SCHEMES, QuantScheme, get_scheme

__all__ = [
    "SCHEMES", "CalibrationReport", "ConversionReport", "QConv2d", "QLinear", "QMultiheadAttention", "QuantConfig", "QuantLayer", "QuantScheme", "SwitchBatchNorm2d", "SwitchNorm", "add_bits",
    "calibrate", "calibrate_bn", "compile_quantizers", "conversion_report", "get_bits", "get_bits_list", "get_scheme", "load_fp_state_dict", "quantize_model",
    "recalibrate_bn", "set_bits", "use_bits",
]
