"""Exceptions whose messages are shown to the user as one line."""


class EmbclustError(Exception):
    """Base class for errors caused by the user's data or configuration."""


class ConfigError(EmbclustError):
    """A configuration value is outside its allowed set or range."""


class DataError(EmbclustError):
    """The input data cannot be clustered as given."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (MLflow's ``message`` for its errors), else the error's type name."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def user_error(exc: BaseException | None) -> EmbclustError | None:
    """The :class:`EmbclustError` behind ``exc``, if any (Hydra wraps errors raised while instantiating)."""
    while exc is not None:
        if isinstance(exc, EmbclustError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
