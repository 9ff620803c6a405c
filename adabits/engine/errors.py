"""The engine's errors live in `adabits.errors` (one hierarchy for the whole package)."""
from ..errors import (
           BitWidthError,
           CheckpointError,
           ConfigError,
           DataError,
           DistributedError,
           RunFolderError,
           TrainingDiverged,
           UserError,
)

__all__ = ["BitWidthError", "CheckpointError", "ConfigError", "DataError", "DistributedError", "RunFolderError",
           "TrainingDiverged", "UserError"]
