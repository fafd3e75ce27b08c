"""KMeans through Intel's scikit-learn extension (oneDAL) where it is installed, else scikit-learn.

``sklearnex.cluster.KMeans`` takes scikit-learn's parameters and runs k-means++ and Lloyd in
oneDAL. Its fitted state is copied into the configured ``sklearn.cluster.KMeans``, so the
logged model is a plain scikit-learn object that loads and predicts without sklearnex.

Threads: oneDAL has its own thread pool, which threadpoolctl does not list. sklearnex sizes it
per call from the OpenMP limit that threadpoolctl reports (daal4py/sklearn/_n_jobs_support.py,
2026.2): inside ``threadpool_limits(n)`` or a joblib loky worker (``OMP_NUM_THREADS`` = its
share of the cores) a fit uses that many threads, as its debug log says ("setting 1 threads").
Under joblib's threading backend it uses all cores. :func:`limit_threads` sets the pool's size
directly (``daal4py.daalinit``) for a block of code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
from sklearn.cluster import KMeans

from embclust.errors import ConfigError

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "sklearnex", "scikit-learn")
# Fitted attributes scikit-learn's KMeans sets in fit and reads in predict / transform / score.
_FITTED = ("cluster_centers_", "labels_", "inertia_", "n_iter_", "n_features_in_", "feature_names_in_",
           "_n_threads", "_n_features_out", "_n_init")
_fallbacks_logged: set[str] = set()


def check_implementation(implementation: str | None) -> str:
    """The configured ``cluster_implementation``, or :class:`ConfigError` naming the allowed values."""
    value = "auto" if implementation is None else str(implementation)
    if value not in IMPLEMENTATIONS:
        raise ConfigError(
            f"cluster_implementation={value!r} is not allowed (allowed: {', '.join(IMPLEMENTATIONS)})"
        )
    return value


def _sklearnex_kmeans():
    """sklearnex's KMeans class, or the reason it cannot be used."""
    try:
        from sklearnex.cluster import KMeans as OneDalKMeans
    except ImportError as exc:  # not installed, or no wheel for this platform
        return None, f"sklearnex is not importable ({exc})"
    # sklearnex says "running accelerated version on CPU" at INFO on every fit; the run's tag
    # cluster_implementation records it instead.
    logging.getLogger("sklearnex").setLevel(logging.WARNING)
    return OneDalKMeans, None


def _unsupported(clusterer: KMeans) -> str | None:
    """Why sklearnex would not run this configuration as scikit-learn does, or None."""
    algorithm = clusterer.get_params(deep=False).get("algorithm", "lloyd")
    if algorithm != "lloyd":  # oneDAL would silently run Lloyd instead
        return f"algorithm={algorithm!r} is not supported by sklearnex (lloyd only)"
    return None


def _log_fallback_once(reason: str, explicit: bool) -> None:
    if reason in _fallbacks_logged:
        return
    _fallbacks_logged.add(reason)
    (log.warning if explicit else log.info)("KMeans: %s; using scikit-learn", reason)


def fit_kmeans(clusterer: KMeans, X: np.ndarray, implementation: str = "auto") -> str:
    """Fit ``clusterer`` (a ``sklearn.cluster.KMeans``) in place; return which implementation ran.

    With ``auto`` or ``sklearnex``, sklearnex fits a copy with the same parameters and its
    fitted attributes are copied into ``clusterer``; where sklearnex is missing or a parameter
    is unsupported, scikit-learn fits ``clusterer`` and the reason is logged once.
    """
    implementation = check_implementation(implementation)
    if implementation != "scikit-learn":
        cls, reason = _sklearnex_kmeans()
        reason = reason or _unsupported(clusterer)
        if reason is None:
            fitted = cls(**clusterer.get_params(deep=False)).fit(X)
            _copy_fitted(fitted, clusterer)
            return "sklearnex"
        _log_fallback_once(reason, explicit=implementation == "sklearnex")
    clusterer.fit(X)
    return "scikit-learn"


def _copy_fitted(source, target: KMeans) -> None:
    """Give ``target`` the fitted state of ``source`` as scikit-learn's own fit would leave it."""
    for name in _FITTED:
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))
    target.labels_ = np.asarray(source.labels_, dtype=np.int32)
    target._algorithm = target.algorithm


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Run the block with oneDAL (sklearnex) using at most ``n`` threads; no-op without sklearnex."""
    try:
        import daal4py
    except ImportError:
        yield
        return
    before = daal4py.num_threads()
    daal4py.daalinit(nthreads=max(1, int(n)))
    try:
        yield
    finally:
        daal4py.daalinit(nthreads=before)
