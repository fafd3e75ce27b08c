"""KMeans through Intel's scikit-learn extension (oneDAL), or with scikit-learn's own starts, fast.

``cluster_implementation``:

- ``auto`` (the default) / ``embclust``: the starts scikit-learn's ``KMeans(random_state=seed)``
  would draw, from :mod:`embclust.cluster.kmeans_plusplus` (all ``n_init`` starts in lockstep,
  2-4x faster than scikit-learn's seeding), each refined by scikit-learn's own Lloyd loop on data
  centred once (:func:`lloyd_refinements`), the best of ``n_init`` kept as scikit-learn keeps it:
  a seeded fit gives scikit-learn's labels, inertia and iterations. From the same start,
  scikit-learn's Lloyd loop measured faster than sklearnex's at every size tried (42,000 rows,
  5 to 768 dimensions, k 10 to 50: 0.76x-1.12x its time, median 0.9x), so sklearnex is not used
  here. Where the seeding does not apply (``init`` is not ``k-means++``, another ``algorithm``,
  sparse data), ``auto`` runs sklearnex end to end.
- ``sklearnex``: ``sklearnex.cluster.KMeans`` fits end to end (k-means++ and Lloyd in oneDAL)
  where it is installed, else scikit-learn. Its k-means++ draws are not scikit-learn's, so labels
  and inertia differ from scikit-learn's seeded fit by the luck of the starts (up to about 1%
  inertia either way on embeddings, as often better as worse). Its own seeding is nearly free:
  on the 25 cells of PCA {5..100} x k {10..50} of 42,000 embeddings at ``n_init=10`` its fits
  took 21 s against ``auto``'s 26 s (scikit-learn: 46 s).
- ``scikit-learn``: scikit-learn's own fit.

Fitted state is copied into the configured ``sklearn.cluster.KMeans``, so the logged model is a
plain scikit-learn object that loads and predicts without sklearnex.

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

from embclust.cluster import kmeans_plusplus
from embclust.errors import ConfigError

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "embclust", "sklearnex", "scikit-learn")
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

    ``auto`` / ``embclust``: scikit-learn's k-means++ starts from embclust's kernel, each refined
    by scikit-learn's Lloyd loop (``embclust-kmeans++/scikit-learn``).
    ``sklearnex``: sklearnex end to end (``sklearnex``). Where sklearnex is missing, a parameter
    is unsupported or the seeding kernel does not apply (``init`` not ``k-means++``), the next
    implementation that can runs and the reason is logged once.
    """
    implementation = check_implementation(implementation)
    if implementation == "scikit-learn":
        clusterer.fit(X)
        return "scikit-learn"
    if implementation in ("auto", "embclust"):
        seeding_reason = _seeding_unsupported(clusterer, X)
        if seeding_reason is None:
            _fit_with_own_seeding(clusterer, X)
            return f"{kmeans_plusplus.IMPLEMENTATION}/scikit-learn"
    cls, reason = _sklearnex_kmeans()
    reason = reason or _unsupported(clusterer)
    if implementation in ("auto", "embclust"):
        (log.warning if implementation == "embclust" else log.info)(
            "KMeans: %s; using %s", seeding_reason, "sklearnex" if reason is None else "scikit-learn"
        )
    if reason is None:
        fitted = cls(**clusterer.get_params(deep=False)).fit(X)
        _copy_fitted(fitted, clusterer)
        return "sklearnex"
    _log_fallback_once(reason, explicit=implementation == "sklearnex")
    clusterer.fit(X)
    return "scikit-learn"


def _seeding_unsupported(clusterer: KMeans, X) -> str | None:
    """Why embclust's k-means++ kernel does not apply to this fit, or None."""
    params = clusterer.get_params(deep=False)
    if not (isinstance(params.get("init"), str) and params["init"] == "k-means++"):
        return f"init={params.get('init')!r} is not k-means++: embclust's seeding does not apply"
    if params.get("algorithm", "lloyd") != "lloyd":
        return f"algorithm={params['algorithm']!r}: embclust's seeding is followed by Lloyd only"
    if not isinstance(X, np.ndarray):
        return "the data is not a dense array: embclust's seeding does not apply"
    return None


def _n_init(clusterer: KMeans) -> int:
    n_init = clusterer.get_params(deep=False).get("n_init", 10)
    return 1 if n_init == "auto" else int(n_init)  # "auto" is 1 with k-means++ (scikit-learn)


def _fit_with_own_seeding(clusterer: KMeans, X: np.ndarray) -> None:
    """scikit-learn's ``KMeans.fit`` with embclust's k-means++ and scikit-learn's Lloyd per start."""
    from sklearn.utils import check_random_state

    params = clusterer.get_params(deep=False)
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    X = np.asarray(X, dtype=dtype, order="C")
    if X.ndim != 2 or not np.isfinite(X).all():
        clusterer.fit(X)  # let scikit-learn say what is wrong with it
        return
    k = int(params["n_clusters"])
    if X.shape[0] < k:
        clusterer.fit(X)
        return
    random_state = check_random_state(params.get("random_state"))
    mean = X.mean(axis=0)  # scikit-learn seeds and refines on centred data
    n_init = _n_init(clusterer)
    # Seeded on X - mean without a centred copy (the seeding holds a float64 one); the copy
    # Lloyd needs is made after.
    starts = kmeans_plusplus.kmeans_plusplus_starts(X, k, random_state, n_init, mean=mean)
    Xc = X - mean
    best = None
    for labels, inertia, centers, n_iter in lloyd_refinements(
        Xc, starts, max_iter=params.get("max_iter", 300), tol=params.get("tol", 1e-4)
    ):
        if best is None or (inertia < best[1] and not _same_clustering(labels, best[0], k)):
            best = (labels, inertia, centers, n_iter)
    labels, inertia, centers, n_iter = best
    if np.unique(labels).size < k:  # scikit-learn's ConvergenceWarning, as one log line
        log.warning(
            "KMeans found %d distinct clusters for clusterer.n_clusters=%d: the data has fewer distinct "
            "points than that (duplicate rows); lower clusterer.n_clusters", np.unique(labels).size, k,
        )
    clusterer.cluster_centers_ = np.asarray(centers, dtype=dtype) + mean
    clusterer.labels_ = np.asarray(labels, dtype=np.int32)
    clusterer.inertia_ = float(inertia)
    clusterer.n_iter_ = int(n_iter)
    clusterer.n_features_in_ = X.shape[1]
    clusterer._n_features_out = k
    clusterer._n_init = n_init
    clusterer._n_threads = _openmp_threads()
    clusterer._algorithm = clusterer.algorithm


def _openmp_threads() -> int:
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return int(_openmp_effective_n_threads())


def _private_lloyd_loop():
    """scikit-learn's single-start Lloyd loop and its tolerance rule, or None where a release lacks them."""
    try:
        from sklearn.cluster._kmeans import _kmeans_single_lloyd, _tolerance
    except ImportError:
        return None
    return _kmeans_single_lloyd, _tolerance


def lloyd_refinements(Xc: np.ndarray, starts, max_iter: int = 300, tol: float = 1e-4):
    """Yield (labels, inertia, centres, n_iter) of scikit-learn's Lloyd from each start in turn.

    ``Xc`` is the centred data, as scikit-learn's ``KMeans.fit`` refines it. Its own loop
    (``_kmeans_single_lloyd``, the Cython kernel ``KMeans(init=centres, n_init=1).fit`` runs)
    is called once per start, so the data is validated, centred, copied and its tolerance
    computed once per fit instead of once per start: 10% of a start's time at 42,000 x 100,
    and faster than sklearnex's Lloyd from the same start at every size measured (PCA 5 to 768
    dimensions, k 10 to 50: 0.76x-1.12x its time, median 0.9x). Where scikit-learn's private
    loop is not there (another release), each start is a public ``KMeans`` fit instead.
    """
    private = _private_lloyd_loop()
    if private is None:
        for centers in starts:
            fitted = KMeans(
                n_clusters=len(centers), init=centers, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd"
            ).fit(Xc)
            yield fitted.labels_, fitted.inertia_, fitted.cluster_centers_, fitted.n_iter_
        return
    _kmeans_single_lloyd, _tolerance = private
    weights = np.ones(Xc.shape[0], dtype=Xc.dtype)
    absolute_tol = _tolerance(Xc, tol)
    n_threads = _openmp_threads()
    for centers in starts:
        init = np.array(centers, dtype=Xc.dtype, order="C", copy=True)  # the loop writes into it
        yield _kmeans_single_lloyd(Xc, weights, init, max_iter=max_iter, tol=absolute_tol, n_threads=n_threads)


def _same_clustering(a: np.ndarray, b: np.ndarray, k: int) -> bool:
    """scikit-learn's test for two labelings that are one clustering up to a permutation."""
    from sklearn.cluster._kmeans import _is_same_clustering

    return bool(_is_same_clustering(np.asarray(a, dtype=np.int32), np.asarray(b, dtype=np.int32), k))


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
