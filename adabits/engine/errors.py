"""The engine's errors live in `adabits.errors` (one hierarchy for the whole package)."""
from ..errors import CheckpointError, ConfigError, TrainingDiverged, UserError

__all__ = ["CheckpointError", "ConfigError", "TrainingDiverged", "UserError"]
