"""Console output and exit: library progress bars and expected warnings off a default run; a quick exit."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, NoReturn

# Warnings that libraries raise on every ordinary run and that ask nothing of the user.
EXPECTED_WARNINGS = (
    # UMAP with a seed runs single-threaded, which is what a reproducible map needs.
    r"n_jobs value .* overridden to 1 by setting random_state",
    # UMAP truncates n_neighbors to the rows; embclust says so naming the key (maps.say_if_neighbours_exceed_rows).
    r"n_neighbors is larger than the dataset size",
    # MLflow finds two local-file dataset source types for a path and picks one.
    r"The specified dataset source can be interpreted in multiple ways",
)


def hydra_verbose() -> bool:
    """Whether the job runs with ``hydra.verbose`` set (true or a list of loggers)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and bool(HydraConfig.get().verbose)


def quiet_libraries(verbose: bool = False) -> None:
    """Turn off tqdm bars and expected library warnings unless ``verbose``.

    Logging levels of MLflow, alembic and numba are set in ``conf/config.yaml``
    (``hydra.job_logging.loggers``), where a user can raise them.
    """
    if verbose:
        return
    # tqdm reads TQDM_* variables as defaults for every bar (UMAP epochs, text embedding).
    os.environ.setdefault("TQDM_DISABLE", "1")
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


# 128 + SIGPIPE: the status of a shell tool whose reader closed the pipe.
BROKEN_PIPE_STATUS = 141


def with_closed_pipe_quiet(entry: Callable[..., int]) -> Callable[..., int]:
    """``entry``, returning :data:`BROKEN_PIPE_STATUS` without a traceback when stdout's reader is gone."""

    def run(*args, **kwargs) -> int:
        try:
            code = entry(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows up here when the output fitted in the buffer
            return code
        except BrokenPipeError:  # `... | head` closed the pipe: drop what is still buffered for stdout,
            # so the exit does not fail writing it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return BROKEN_PIPE_STATUS

    run.__doc__ = entry.__doc__
    return run


def one_line_config_errors() -> None:
    """Make Hydra report a command line it cannot compose (a misspelt key, an unknown option of a
    config group, a malformed override) in one line naming it and what is allowed, instead of
    its block of lines ending in 'Set the environment variable HYDRA_FULL_ERROR=1'.

    HYDRA_FULL_ERROR=1 keeps Hydra's own report; errors inside a run are embclust's to report.
    """
    from hydra._internal import utils as hydra_utils
    from hydra.errors import CompactHydraException

    original = hydra_utils.run_and_report
    if getattr(original, "embclust_one_line", False):
        return

    def run_and_report(func):
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return original(func)

        def compact():
            try:
                return func()
            except CompactHydraException as exc:
                print(config_error_line(exc), file=sys.stderr)
                raise SystemExit(1) from None

        return original(compact)

    run_and_report.embclust_one_line = True
    hydra_utils.run_and_report = run_and_report


def config_error_line(exc: BaseException) -> str:
    """Hydra's composition error (and the OmegaConf error under it) as one line."""
    text = str(exc).split("Config search path:", 1)[0]
    parts, options = [], []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if line.startswith("Available options in"):
            parts.append(line.rstrip(":") + ":")
            options = parts
        elif options is parts and _is_option_line(line):
            options.append(line + ",")
        else:
            parts.append(line)
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        reason = str(cause).strip().splitlines()[0].strip()
        if reason and reason not in " ".join(parts):
            parts.append(f"({reason})")
    line = " ".join(parts).replace(",  ", ", ").rstrip(",")
    missing = re.match(r"Could not override '([^']+)'\. To append to your config use \+\S+", line)
    if missing:  # Hydra's "+key=..." would add a key the target does not take
        line = _missing_key_line(missing.group(1), line)
    elif "LexerNoViableAltException" in line or "mismatched input" in line or "token recognition error" in line:
        line += (" (a value with ~, spaces, parentheses, = or commas, or letters beyond ASCII, must be quoted inside "
                 "the override: 'dataset.path=\"~/my data (1).npy\"')")
    return "config error: " + line


# Config groups whose options read a file the user names, for a path key the chosen option lacks.
_FILE_DATASETS = "dataset=npy, parquet, csv, texts or tabular"


def _first_value(override: str) -> str:
    """A sweep's override (``clusterer=kmeans,hdbscan``) as its first value, so one config can be composed."""
    key, eq, value = override.partition("=")
    if eq and "," in value and not value.startswith(("[", "{", "'", '"')) and "(" not in value:
        return f"{key}={value.split(',', 1)[0]}"
    return override


def _missing_key_line(key: str, hydra_line: str) -> str:
    """'clusterer.n_cluster: clusterer=kmeans has no key 'n_cluster' (its keys: ...): did you mean ...?' from
    the config composed without that override, or Hydra's own line when it cannot be composed."""
    import difflib

    if any(a.startswith(("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp")) for a in sys.argv[1:]):
        return hydra_line  # composed from another config than conf/config.yaml
    try:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.types import RunMode
        from omegaconf import DictConfig, OmegaConf

        others = [_first_value(a) for a in sys.argv[1:] if not a.startswith("-") and a.partition("=")[0].lstrip("+~") != key]
        composed = GlobalHydra.instance().config_loader().load_configuration(
            config_name="config", overrides=others, run_mode=RunMode.RUN)
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(composed, parent) if parent else composed
        if not isinstance(node, DictConfig):
            return hydra_line
        keys = [str(k) for k in node.keys() if not str(k).startswith("_") and (parent or k != "hydra")]
        group = parent.split(".")[0]
        choice = composed.hydra.runtime.choices.get(group) if parent and "." not in parent else None
        where = f"{group}={choice}" if choice else (parent or "the config")
        out = f"{key}: {where} has no key {leaf!r} (its keys: {', '.join(keys)})"
        close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.8)
        if close:
            return f"{out}: did you mean {parent + '.' if parent else ''}{close[0]}?"
        if group == "dataset" and leaf.endswith("path"):
            return f"{out}: to read your own file, choose the dataset's format first ({_FILE_DATASETS}), e.g. dataset=npy {key}=..."
        target = node.get("_target_") if parent else None
        if target:
            return f"{out}: use one of its keys (+{key}=... would pass it to {target}, which must take such an argument)"
        return f"{out}: use one of its keys"
    except Exception:  # noqa: BLE001 - Hydra's own line is still right
        return hydra_line


def _is_option_line(line: str) -> bool:
    return " " not in line and "'" not in line


def exit_without_teardown(entry: Callable[[], object]) -> NoReturn:
    """Run ``entry`` (the Hydra main), then exit with its status without the interpreter's teardown.

    A finished run has flushed everything it wrote, yet tearing down the interpreter (freeing
    every module of MLflow, scikit-learn, oneDAL and their thread pools) takes about 0.9 s of a
    5 s run. The exit handlers still run (MLflow's, logging's), and the usual exit is kept when
    a non-daemon thread is still working or ``entry`` raised anything other than ``SystemExit``.
    """
    from embclust import signals
    from embclust.signals import Stopped

    try:
        entry()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    except Stopped as exc:  # between a sweep's cells: its parent run is closed (and says so) on exit
        code = exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before any run started
        print("stopped by SIGINT", file=sys.stderr)
        code = 130
    received = signals.received
    if received is not None and isinstance(code, int) and code > 128 and code != received.exit_code:
        code = received.exit_code  # a second, other signal on the way out: the status the run's reason names
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        raise SystemExit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # SystemExit("message"): print it, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:
        raise SystemExit(code)
    run_exit_handlers()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_NO_OUTPUT_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                    "--version")


def hydra_output_dir(argv: list[str]) -> tuple[Path, str] | None:
    """The folder Hydra will write this command's config and log in, and the key that sets it.

    None when the command writes nothing there (``--help``, ``--cfg``, ...). Interpolations
    (``${now:...}``) are cut off: their parent is what must be writable.
    """
    if any(arg in _NO_OUTPUT_FLAGS or arg.split("=", 1)[0] in _NO_OUTPUT_FLAGS for arg in argv):
        return None
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = "multirun" if multirun else "outputs"
    for arg in argv:
        name, _, given = arg.partition("=")
        if name.lstrip("+") == key and given:
            value = given.strip("'\"")
    value = value.split("${", 1)[0] or "."
    return Path(value), key


# What Hydra writes into a run's folder before the run (.hydra/config.yaml, hydra.yaml, overrides.yaml)
# is about 12 KB; the probe asks for room for that and the start of the log.
_HYDRA_FILES_BYTES = 64 * 1024


def log_file_errors_once() -> None:
    """A log file that cannot be written (its disk full) is said once on stderr, not as Python's
    "--- Logging error ---" traceback for every line; the run goes on, logging to the console."""
    import logging

    def handle_error(self, record):  # noqa: ARG001
        if getattr(self, "_embclust_said", False):
            return
        self._embclust_said = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or exc
        sys.stderr.write(f"cannot write the log file {getattr(self, 'baseFilename', '?')} ({reason}): the run goes on, "
                         "logging to the console only\n")

    logging.FileHandler.handleError = handle_error


def check_hydra_output_dir(argv: list[str]) -> None:
    """Exit with one line when Hydra could not write its run folder (read-only, full, a file on the way).

    Hydra writes each run's config and log there before any embclust code runs, and reports a
    failure with a traceback.
    """
    import tempfile

    from embclust.errors import os_error_reason

    found = hydra_output_dir(argv)
    if found is None:
        return
    folder, key = found
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    try:
        if not probe_in.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(probe_in))
        with tempfile.NamedTemporaryFile(dir=probe_in, prefix=".embclust-probe-") as f:
            f.write(b"\0" * _HYDRA_FILES_BYTES)
            f.flush()
            os.fsync(f.fileno())  # a full disk may refuse only when the data reaches it
    except OSError as exc:
        reason = os_error_reason(exc, folder / "x")
        if isinstance(exc, NotADirectoryError):
            reason = f"{probe_in} is a file, not a folder"
        print(
            f"cannot write in {folder.absolute()} ({key}, where Hydra keeps each run's config and log): {reason}; run from a "
            f"folder you can write to, or set {key}=<a folder you can write to>",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
