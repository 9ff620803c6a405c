"""The training framework: config schema, joint trainer, optimizers and schedules, checkpoints, reports;
and `load_trained`, the trained model without a Trainer (evaluation and deployment)."""
from ..analysis.evaluation import evaluate_meters as evaluate
from ..errors import CheckpointError, ConfigError, UserError
from .config import LoadedConfig, TrainConfig, build_config, load_config
from .loading import TrainedModel, WeightsSource, load_trained, weights_source
from .trainer import Interrupted, Trainer

__all__ = ["CheckpointError", "ConfigError", "Interrupted", "LoadedConfig", "TrainConfig", "TrainedModel", "Trainer",
           "UserError", "WeightsSource", "build_config", "evaluate", "load_config", "load_trained", "weights_source"]
