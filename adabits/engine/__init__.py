"""The training framework: config schema, joint trainer, optimizers and schedules, checkpoints, reports."""
from .config import LoadedConfig, TrainConfig, build_config, load_config
from .errors import CheckpointError, ConfigError, UserError
from .trainer import Interrupted, Trainer

__all__ = ["CheckpointError", "ConfigError", "Interrupted", "LoadedConfig", "TrainConfig", "Trainer", "UserError",
           "build_config", "load_config"]
