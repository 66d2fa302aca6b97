"""Errors that are the user's to fix: shown as one clear paragraph, never as a traceback."""


class CnnlabError(Exception):
    """Base class of errors whose message alone tells the user what to change."""

    #: process exit status: 2 for bad input (config, data, checkpoint), 1 for a failed run
    exit_code = 2


class ConfigError(CnnlabError, ValueError):
    """A configuration value that cannot work (names the key, the value and the fix)."""


class RunExistsError(ConfigError):
    """The run directory already holds a run; it is left untouched."""


class DataError(CnnlabError):
    """Dataset files that are missing, corrupt or inconsistent with the config."""


class CheckpointError(CnnlabError):
    """A checkpoint that cannot be loaded safely or does not match the model config."""


class RunFailedError(CnnlabError):
    """Training started but cannot go on (e.g. the loss diverged); the run is marked failed."""

    exit_code = 1


class NonFiniteLossError(RunFailedError):
    """The training loss or the weights became NaN or infinite."""
