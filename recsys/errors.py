"""Errors a user can act on: each names the file, column, row or field at fault."""


class RecsysError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ConfigError(RecsysError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(RecsysError):
    """Input data is invalid; the message names the file, column and first bad row."""


class ArtifactError(RecsysError):
    """A run folder is missing a file or was written by an incompatible version."""
