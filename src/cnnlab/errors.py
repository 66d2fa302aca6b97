"""Errors that are the user's to fix: shown as one clear paragraph, never as a traceback."""


class CnnlabError(Exception):
    """Base class of errors whose message alone tells the user what to change."""


class ConfigError(CnnlabError, ValueError):
    """A configuration value that cannot work (names the key, the value and the fix)."""


class DataError(CnnlabError):
    """Dataset files that are missing, corrupt or inconsistent with the config."""


class CheckpointError(CnnlabError):
    """A checkpoint that cannot be loaded safely or does not match the model config."""
