"""User-facing errors. The CLI prints these as one clear line instead of a traceback."""


class AstraError(Exception):
    """Bad input from the user (files, actions, configs, checkpoints): the message says what and where."""


class CheckpointError(AstraError):
    """A checkpoint does not match the model: names the missing, unexpected or mis-shaped keys."""


class DataError(AstraError):
    """A dataset file is corrupt, truncated or inconsistent: names the file and the row."""


class ConfigError(AstraError, ValueError):
    """A config value of the wrong kind or an unknown setting: names the setting by its dotted path."""


class UnusualActionWarning(UserWarning):
    """Requested actions far outside the model's training actions: the output will not follow them."""
