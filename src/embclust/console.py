"""Console output: keep library progress bars and expected library warnings off a default run."""

from __future__ import annotations

import os
import warnings

# Warnings that libraries raise on every ordinary run and that ask nothing of the user.
EXPECTED_WARNINGS = (
    # UMAP with a seed runs single-threaded, which is what a reproducible map needs.
    r"n_jobs value .* overridden to 1 by setting random_state",
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
