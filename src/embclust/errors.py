"""Exceptions whose messages are shown to the user as one line."""


class EmbclustError(Exception):
    """Base class for errors caused by the user's data or configuration."""


class ConfigError(EmbclustError):
    """A configuration value is outside its allowed set or range."""


class DataError(EmbclustError):
    """The input data cannot be clustered as given."""
