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


class PathError(EmbclustError):
    """A file or folder could not be read or written (missing, not a folder, read-only, full, no permission)."""


def os_error_reason(exc: OSError, path=None) -> str:
    """What went wrong with a path, in words: 'the disk is full', '/a/b is a file, not a folder', ..."""
    import errno
    from pathlib import Path

    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "requested and" in str(exc) or "No space left" in str(exc):
        return "the disk is full"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        for parent in Path(path).parents:
            if parent.is_file():
                return f"{parent} is a file, not a folder"
    if code == errno.EISDIR:
        return "it is a folder, not a file"
    if code == errno.ENOENT:
        return "no such file or folder"
    return getattr(exc, "strerror", None) or first_line(exc)


def path_error(exc: OSError, path, setting: str, action: str = "write", instead: str | None = None) -> PathError:
    """A one-line :class:`PathError` for ``exc`` at ``path``, naming the setting that chose the path.

    ``instead``: what to do other than freeing space (default: choose another ``setting``)."""
    reason = os_error_reason(exc, path)
    instead = instead or f"choose another {setting}"
    todo = f"free some space or {instead}" if reason == "the disk is full" else instead
    return PathError(f"cannot {action} {path} ({setting}): {reason}; {todo}")


# The artifact location of a run is its experiment's, fixed when the experiment was created.
ARTIFACT_LOCATION = "the experiment's artifact location"
ARTIFACT_LOCATION_INSTEAD = (
    "run with another mlflow.experiment_name (a new experiment keeps its artifacts in ./mlruns of the folder "
    "it is first run from) or another mlflow.tracking_uri"
)
