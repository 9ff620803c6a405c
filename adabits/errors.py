"""The errors adabits raises on purpose, in one hierarchy.

`AdabitsError` is the base of all of them. `UserError` and its subclasses are caused by the
user's input (a config, a file, a bit-width): the CLI prints their message alone and exits with
status 2. Anything else that escapes is a bug and keeps its traceback.

The errors a library call raises for a bad argument also subclass ValueError, so code written
against the plain-Python contract (`except ValueError`) keeps working.

This module imports nothing, so every layer of the package (adabits.quant included) may use it.
"""


class AdabitsError(Exception):
    """Base of every error adabits raises deliberately."""


class UserError(AdabitsError):
    """Bad config, missing file, unusable checkpoint: something the user fixes, not a bug."""


class ConfigError(UserError):
    """A config file or override that cannot be loaded or validated."""


class CheckpointError(UserError):
    """A checkpoint that is unreadable or belongs to another model or bits_list."""


class DataError(UserError):
    """A dataset that is missing, incomplete or not in the expected format."""


class BitWidthError(UserError, ValueError):
    """A bit-width (or bits_list) that is malformed or not one the model has."""


class ExportError(UserError, ValueError):
    """The model (or one of its layers) uses something the exported format cannot express."""


class PackedFormatError(UserError, ValueError):
    """A packed model file that is missing, unreadable, or does not describe a model adabits can build."""


class QuantOptionError(UserError, ValueError):
    """A quantization option (scheme, rescale type) that is not one of its allowed values."""


class ExportedFileError(UserError, ValueError):
    """An exported model (a `.pte`, an ONNX folder or its manifest) that is missing, corrupt or not one adabits wrote."""


class ModelInputError(UserError, ValueError):
    """Inputs an exported model cannot run: another rank, shape or type, non-finite values, values it does not take."""


class CalibrationError(UserError, ValueError):
    """Calibration asked for no batches, or was given none or malformed ones."""


class TrainingDiverged(UserError):
    """The loss stopped being finite: a result of the recipe (lr, warmup), raised with advice."""


class DistributedError(UserError):
    """The processes of a distributed run disagree, or the process group cannot be set up."""


class RunFolderError(UserError):
    """A run folder that cannot be used as asked: in use by another run, not writable, or holding records a new run would replace."""
