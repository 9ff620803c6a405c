"""Errors caused by the user's input: the CLI prints their message alone and exits with status 2."""


class UserError(Exception):
    """Bad config, missing file, unusable checkpoint: something the user fixes, not a bug."""


class ConfigError(UserError):
    """A config file or override that cannot be loaded or validated."""


class CheckpointError(UserError):
    """A checkpoint that is unreadable or belongs to another model or bits_list."""


class TrainingDiverged(UserError):
    """The loss stopped being finite: a result of the recipe (lr, warmup), raised with advice."""
