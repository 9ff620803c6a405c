"""adabits: one quantized network that runs at many bit-widths (AdaBits + SAT)."""

from .analysis.evaluation import evaluate
from .errors import AdabitsError, UserError
from .export import export_model
from .joint import joint_step
from .memory import keep_freed_memory
from .models import create_model, list_models, register_model
from .quant import (
    CalibrationReport,
    QConv2d,
    QLinear,
    QMultiheadAttention,
    QuantConfig,
    QuantLayer,
    SwitchBatchNorm2d,
    calibrate,
    calibrate_bn,
    compile_quantizers,
    conversion_report,
    get_bits,
    get_bits_list,
    load_fp_state_dict,
    quantize_model,
    recalibrate_bn,
    set_bits,
    use_bits,
)
from .weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "AdabitsError", "CalibrationReport", "LoadReport", "QConv2d", "QLinear", "QMultiheadAttention", "QuantConfig", "QuantLayer", "SwitchBatchNorm2d",
    "calibrate", "calibrate_bn", "compile_quantizers", "conversion_report", "create_model", "evaluate", "export_model", "get_bits",
    "get_bits_list", "joint_step", "keep_freed_memory", "list_models", "load_fp_state_dict", "load_weights", "quantize_model", "recalibrate_bn", "register_model",
    "set_bits", "use_bits", "UserError",
]
