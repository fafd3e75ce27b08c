"""KMeans that does less work for the same answer: restarts on a sample, one refinement on all rows.

``cluster_implementation``:

- ``auto`` (the default): the ``n_init`` k-means++ restarts run on a seeded sample of
  ``max(kmeans.sample_per_cluster * k, kmeans.min_sample)`` rows (256 per cluster, at least
  10,000), scikit-learn's own starts and Lloyd loop on the sample, one thread per restart. On
  data up to ``IN_MEMORY_MAX_VALUES`` values and rows x k x columns up to ``IN_MEMORY_MAX_WORK``
  the two best restarts are each refined by scikit-learn's Lloyd loop on all rows to its
  convergence rule, one thread each, and the lower inertia is kept (with engine=ray such data is
  gathered to the driver once); larger data has its best restart refined by Lloyd passes over
  row blocks (:mod:`lloyd`, on the Ray workers with engine=ray) until ``kmeans.refine_tol``.
  Labels and inertia come from all rows. Data no larger than the sample is fitted whole, with no
  refinement, and so is data where the sample would save no work (:func:`_sample_saves_work`:
  ``n_init=1``, or in memory up to ``sample x per_init x n_init / (n_init - 1)`` rows):
  scikit-learn's own starts and Lloyd loop on every row. The result does not depend on the
  thread count. On the
  42,000 x 768 benchmark's 25 cells (PCA 5..100, k 10..50) and a noisier 42,000 x 384 set of 100
  clusters, three seeds each, the median inertia lands +0.001% and +0.031% from scikit-learn's
  ``KMeans(n_init=10)`` on all rows, in 11.6 s and 25.9 s for the 25 fits (three restarts per
  ``n_init`` and a refinement stopped at ``refine_tol``, the previous default: +0.011% and
  +0.095%, 16.2 s and 28.2 s). faiss 1.15 on the same samples was not faster (k-means++ init
  0.25-7.3 s) and landed worse (+0.2% to +2.7%).
- ``embclust``: the starts scikit-learn's ``KMeans(random_state=seed)`` would draw on every row,
  from :mod:`embclust.cluster.kmeans_plusplus` (all ``n_init`` starts in lockstep), each refined
  by scikit-learn's own Lloyd loop: scikit-learn's labels, inertia and iterations.
  Where the seeding does not apply (``init`` is not ``k-means++``, another ``algorithm``,
  sparse data), ``auto`` and ``embclust`` run sklearnex end to end where it is installed, else
  scikit-learn.
- ``sklearnex``: ``sklearnex.cluster.KMeans`` fits end to end (k-means++ and Lloyd in oneDAL)
  where it is installed (``pip install embclust[sklearnex]``), else scikit-learn. Its k-means++
  draws are not scikit-learn's (inertia up to about 1% either way on embeddings).
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
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from embclust import blocks
from embclust.cluster import kmeans_plusplus, lloyd
from embclust.engine.rows import every_row, is_rows_view
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


@dataclass(frozen=True)
class SampleSettings:
    """How ``auto`` sizes the sample its restarts run on: ``max(sample_per_cluster * k, min_sample)`` rows."""

    sample_per_cluster: int = 256
    min_sample: int = 10_000
    # Restarts on the sample per ``n_init``: a restart there costs a fraction of one on all rows,
    # and a sample's inertia ranks basins less surely than all rows do. None (auto): 2 where the
    # refinement runs in memory (its two best restarts are both refined), 3 where it runs as
    # passes over row blocks (the best alone).
    restarts_per_init: int | None = None
    # The refinement over all rows stops once a pass lowers the inertia by less than this
    # fraction (None: scikit-learn's rule alone, up to max_iter passes over every row).
    refine_tol: float | None = 1e-4
    # At most this many row-centre distances per Lloyd iteration, summed over the restarts on the
    # sample (restarts x sample rows x k); above it, fewer restarts (at least one), each spread
    # over every thread by row blocks. None: no limit. At k = 1,000 the sample is 256,000 rows
    # and 30 restarts would be 7.7e9 per iteration; at k <= 200 the limit is not reached.
    max_restart_work: float | None = 5e8

    def size(self, n_clusters: int) -> int:
        return max(int(self.sample_per_cluster) * int(n_clusters), int(self.min_sample))

    def per_init(self, in_memory: bool) -> int:
        """Restarts on the sample per ``n_init`` (``restarts_per_init``, or its auto value)."""
        if self.restarts_per_init is not None:
            return max(1, int(self.restarts_per_init))
        return IN_MEMORY_RESTARTS_PER_INIT if in_memory else PASSES_RESTARTS_PER_INIT

    def restarts(self, requested: int, sample_rows: int, n_clusters: int) -> int:
        """How many of the ``requested`` restarts fit in ``max_restart_work`` (at least one)."""
        if self.max_restart_work is None or float(self.max_restart_work) == float("inf"):
            return requested  # null or .inf: no limit
        return max(1, min(requested, int(float(self.max_restart_work) // (int(sample_rows) * int(n_clusters)))))


@dataclass
class KMeansFit:
    """Which implementation fitted a KMeans, and how many rows its restarts ran on (None: all)."""

    implementation: str
    sample_size: int | None = None
    restarts: int | None = None  # restarts run on the sample (auto)
    refinement: str | None = None  # how auto refined on all rows: IN_MEMORY or PASSES


def fit_kmeans(
    clusterer: KMeans, X: np.ndarray, implementation: str = "auto", sample: SampleSettings | None = None,
    passes=None,
) -> KMeansFit:
    """Fit ``clusterer`` (a ``sklearn.cluster.KMeans``) in place; say which implementation ran.

    ``auto``: the ``n_init`` k-means++ restarts on a seeded sample of ``sample.size(k)`` rows,
    the best refined by Lloyd on all rows (``SAMPLE_IMPLEMENTATION``); a plain fit of every row
    where the data is no larger than the sample or the sample would save no work.
    ``embclust``: scikit-learn's k-means++ starts from embclust's kernel, each refined by
    scikit-learn's Lloyd loop (``embclust-kmeans++/scikit-learn``).
    ``sklearnex``: sklearnex end to end (``sklearnex``). Where sklearnex is missing, a parameter
    is unsupported or the seeding kernel does not apply (``init`` not ``k-means++``), the next
    implementation that can runs and the reason is logged once.
    ``passes``: where ``auto``'s passes over all rows run (a remote row set holding the rows of
    ``X``, engine=ray); ``X`` itself by default.
    """
    implementation = check_implementation(implementation)
    if implementation == "scikit-learn":
        clusterer.fit(X)
        return KMeansFit("scikit-learn")
    if implementation in ("auto", "embclust"):
        seeding_reason = _seeding_unsupported(clusterer, X)
        if seeding_reason is None and implementation == "auto":
            return _fit_on_sample(clusterer, X, sample or SampleSettings(), passes)
        if seeding_reason is None:
            _fit_with_own_seeding(clusterer, X)
            return KMeansFit(f"{kmeans_plusplus.IMPLEMENTATION}/scikit-learn")
    cls, reason = _sklearnex_kmeans()
    reason = reason or _unsupported(clusterer)
    if implementation in ("auto", "embclust"):
        (log.warning if implementation == "embclust" else log.info)(
            "KMeans: %s; using %s", seeding_reason, "sklearnex" if reason is None else "scikit-learn"
        )
    if reason is None:
        fitted = cls(**clusterer.get_params(deep=False)).fit(X)
        _copy_fitted(fitted, clusterer)
        return KMeansFit("sklearnex")
    _log_fallback_once(reason, explicit=implementation == "sklearnex")
    clusterer.fit(X)
    return KMeansFit("scikit-learn")


SAMPLE_IMPLEMENTATION = "embclust-sample-restarts"
# How auto refines on all rows (tag kmeans_refinement). In memory: scikit-learn's own Lloyd loop
# to its convergence rule, on one thread per candidate, two for a lone one (so the result does
# not depend on the thread count), from each of the IN_MEMORY_CANDIDATES best restarts, the
# lower inertia kept.
# Passes: Lloyd over row blocks (:mod:`lloyd`) from the best restart, until kmeans.refine_tol.
IN_MEMORY, PASSES = "in-memory", "passes"
IN_MEMORY_CANDIDATES = 2
IN_MEMORY_RESTARTS_PER_INIT, PASSES_RESTARTS_PER_INIT = 2, 3
# In-memory refinement where one Lloyd iteration is at most this many row-centre products (rows
# x k x columns; about 0.05 s on one core; 42,000 x 768 at k = 50 is 1.6e9) and the data at most
# this many values (1 GB of float32: the copy a non-contiguous matrix needs is bounded). Both
# depend only on the data's shape and k, never on how the rows are held (an array, a memory map),
# so a sweep cell and the same run alone take the same path and give the same labels.
IN_MEMORY_MAX_WORK = 2e9
IN_MEMORY_MAX_VALUES = 2.5e8
# Lloyd iterations of an in-memory refinement, as a share of those of a k-means++ start on all
# rows: 25 against 47 on average over the 25 cells of the 42,000 x 768 sweep benchmark (n_init=1).
REFINEMENT_SHARE = 0.5
# OpenMP threads of scikit-learn's Lloyd loop for a lone restart or refinement (see _threads_per_start).
LONE_START_THREADS = 2
# Rows per centre k-means++ seeds from when the restart budget is reached (large k).
SEED_ROWS_PER_CLUSTER = 32


def sample_rows(n_rows: int, size: int, random_state) -> np.ndarray | None:
    """Sorted indices of a seeded sample of ``size`` of ``n_rows`` rows, or None when it would be all rows."""
    if size >= n_rows:
        return None
    seed = random_state if isinstance(random_state, (int, np.integer)) else None
    if isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(np.iinfo(np.int32).max))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=size, replace=False))


def _fit_on_sample(clusterer: KMeans, X: np.ndarray, sample: SampleSettings, passes=None) -> KMeansFit:
    """``n_init`` restarts on a seeded sample, the best refined by Lloyd over all rows' blocks.

    Restarts find a good basin, which a sample of a few hundred rows per cluster already shows
    (faiss trains on 256 rows per centroid by default); only the refinement needs every row.
    Each restart runs scikit-learn's Lloyd loop on one thread, the restarts spread over the
    threads, and the refinement adds its block sums in block order: the labels and inertia do
    not depend on the thread count.
    """
    from sklearn.utils import check_random_state

    params = clusterer.get_params(deep=False)
    k = int(params["n_clusters"])
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    n_rows = X.shape[0]
    if X.ndim != 2 or n_rows < k:
        clusterer.fit(X)  # let scikit-learn say what is wrong with it
        return KMeansFit("scikit-learn")
    size = sample.size(k)
    n_init = _n_init(clusterer)
    # Data larger than the sample, fitted whole because the sample would save no work.
    whole_by_choice = (n_rows > size and _refines_in_memory(X, k) and sample.restarts(n_init, n_rows, k) == n_init
                       and not _sample_saves_work(n_rows, n_init, size, sample.per_init(True)))
    random_state = check_random_state(params.get("random_state"))
    rows = None if whole_by_choice else sample_rows(n_rows, size, params.get("random_state"))
    S = np.asarray(every_row(X) if rows is None else X[rows], dtype=dtype, order="C")
    if not np.isfinite(S).all():
        clusterer.fit(X)
        return KMeansFit("scikit-learn")
    n_threads = _openmp_threads()
    max_iter, tol = params.get("max_iter", 300), params.get("tol", 1e-4)
    mean = S.mean(axis=0)
    in_memory = rows is not None and _refines_in_memory(X, k)
    requested = _n_init(clusterer) * (1 if rows is None else sample.per_init(in_memory))
    n_restarts = sample.restarts(requested, S.shape[0], k)
    # k-means++ is k sequential steps over every row it seeds from; above the budget (large k)
    # it seeds from every step-th sample row, about SEED_ROWS_PER_CLUSTER per centre, and Lloyd
    # then runs on the whole sample.
    step = max(1, S.shape[0] // max(SEED_ROWS_PER_CLUSTER * k, int(sample.min_sample))) if n_restarts < requested else 1
    with blocks.one_blas_thread():  # OpenBLAS's GEMM rounds by its thread count
        starts = kmeans_plusplus.kmeans_plusplus_starts(np.ascontiguousarray(S[::step]) if step > 1 else S, k, random_state, n_restarts,
                                                        mean=mean, n_threads=n_threads)
    if n_restarts < requested:
        # Large k: few restarts, too few to keep the threads busy one restart each; each runs
        # Lloyd over the sample's row blocks on every thread (block sums in block order).
        log.info("kmeans: %d of %d restarts on %d sample rows (kmeans.max_restart_work=%g)",
                 n_restarts, requested, S.shape[0], sample.max_restart_work)
        best = [_best_of_blocked_restarts(S - mean, starts, k, max_iter, tol, n_threads, sample.refine_tol)]
    elif in_memory:
        restarts = lloyd_refinements(S - mean, starts, max_iter=max_iter, tol=tol, n_threads=n_threads, one_thread_each=True)
        best = _best_distinct(restarts, k, IN_MEMORY_CANDIDATES)
    elif whole_by_choice:
        # Data larger than the sample, fitted whole: its centred rows made once (in place where S
        # is already a copy, not the caller's array or file), and scikit-learn's tolerance rule by
        # blocks in float64 instead of its variance over another full-size temporary.
        copied = not (isinstance(X, np.ndarray) and np.may_share_memory(S, X))
        S = np.subtract(S, mean, out=S) if copied else S - mean
        best = [_best_of_restarts(S, starts, k, max_iter, tol, n_threads, lloyd.mean_variance(S, n_threads) * tol)]
    else:
        best = [_best_of_restarts(S - mean, starts, k, max_iter, tol, n_threads)]
    labels, inertia, centers, n_iter = best[0]
    del S
    if rows is None:
        centers = np.asarray(centers, dtype=dtype) + mean
    else:
        X = X if X.dtype == dtype else np.asarray(X, dtype=dtype)
        rows_for_passes = X if passes is None or dtype != np.float32 else passes
        if in_memory:
            # engine=ray: the rows gathered once by a pass (preprocessed by the workers, the bits
            # of a local run); the final labels and exact inertia by one more pass, the same
            # function in both engines (workers write the labels dataset there).
            # The rows are centred by the sample's mean, as scikit-learn centres them before its
            # loop (a large common offset would swamp the distances in float32); the candidates
            # are in those coordinates already.
            held = every_row(X, dtype)
            centred = np.subtract(held, mean, out=held) if is_rows_view(X) else held - mean  # gathered: in place
            del held
            refined = _refine_in_memory(centred, [np.asarray(b[2], dtype=dtype) for b in best], max_iter, tol, n_threads)
            del centred
            centers = (refined.centers + mean).astype(dtype)
            labels, inertia = lloyd.assign_with_inertia(rows_for_passes, centers, n_threads)
            refined = lloyd.Refinement(labels, inertia, centers, refined.n_iter)
        else:
            refined = lloyd.refine(rows_for_passes, np.asarray(centers, dtype=dtype) + mean, n_threads, max_iter=max_iter, tol=tol,
                                   inertia_tol=sample.refine_tol)
        labels, inertia, centers, n_iter = refined.labels, refined.inertia, refined.centers, refined.n_iter
        if not np.isfinite(inertia):  # the sample was finite, some other row is not
            raise ValueError("Input X contains NaN or infinity outside the k-means sample: KMeans needs finite values")
    _set_fitted(clusterer, labels, inertia, centers, n_iter, X.shape[1], _n_init(clusterer), dtype)
    return KMeansFit(SAMPLE_IMPLEMENTATION, None if rows is None else int(rows.size), n_restarts,
                     None if rows is None else IN_MEMORY if in_memory else PASSES)


def _refines_in_memory(X, k: int) -> bool:
    """Whether auto refines ``X`` in memory with scikit-learn's Lloyd loop (see IN_MEMORY): decided
    by the data's shape and k alone, so both engines, and an array or a memory map of the same
    rows, take the same path (engine=ray gathers rows this small to the driver)."""
    if len(X.shape) != 2:
        return False
    values = float(X.shape[0]) * X.shape[1]
    return values <= IN_MEMORY_MAX_VALUES and values * k <= IN_MEMORY_MAX_WORK and _private_lloyd_loop() is not None


def _sample_saves_work(n_rows: int, n_init: int, sample_size: int, per_init: int) -> bool:
    """Whether restarts on the sample and the in-memory refinement of the best on all rows are
    less work than ``n_init`` restarts on all rows, counted in rows a Lloyd iteration visits.

    A refinement starts in a sample restart's basin and takes about half the iterations of a
    k-means++ start on all rows (REFINEMENT_SHARE). At ``n_init=1`` the sample never saves work,
    and where it saves none, ``auto`` runs scikit-learn's own starts and Lloyd loop on every row.
    """
    restarts = float(n_init) * per_init * sample_size
    refinements = IN_MEMORY_CANDIDATES * REFINEMENT_SHARE * float(n_rows)
    return restarts + refinements < float(n_init) * n_rows


def _best_distinct(results: list, k: int, n: int) -> list:
    """The ``n`` lowest-inertia results (earlier start first on ties), no two of them the same clustering."""
    chosen: list = []
    for i in sorted(range(len(results)), key=lambda i: results[i][1]):
        if not any(_same_clustering(results[i][0], c[0], k) for c in chosen):
            chosen.append(results[i])
            if len(chosen) == n:
                break
    return chosen


def _refine_in_memory(X: np.ndarray, candidates: list, max_iter: int, tol: float, n_threads: int) -> lloyd.Refinement:
    """scikit-learn's Lloyd loop on all rows from each candidate's centres, to its convergence rule,
    one thread per candidate (two for a lone one); the lowest inertia (exact, float64) kept, the first on ties."""
    Xc = np.ascontiguousarray(X)
    absolute_tol = lloyd.mean_variance(Xc, n_threads) * tol  # scikit-learn's tolerance, in float64
    results = lloyd_refinements(Xc, candidates, max_iter=max_iter, tol=tol, n_threads=n_threads, one_thread_each=True,
                                absolute_tol=absolute_tol)
    refined = [lloyd.Refinement(labels, lloyd.inertia(Xc, labels, centers, 1), centers, n_iter)
               for labels, _, centers, n_iter in results]
    return min(refined, key=lambda r: r.inertia)


def _best_of_blocked_restarts(Xc: np.ndarray, starts, k: int, max_iter: int, tol: float, n_threads: int,
                              inertia_tol: float | None):
    """Lloyd from each start over ``Xc``'s row blocks on ``n_threads`` threads, the best kept as scikit-learn keeps it."""
    results = ((r.labels, r.inertia, r.centers, r.n_iter)
               for r in (lloyd.refine(Xc, start, n_threads, max_iter=max_iter, tol=tol, inertia_tol=inertia_tol) for start in starts))
    return _best_as_scikit_learn(results, k)


def _best_of_restarts(Xc: np.ndarray, starts, k: int, max_iter: int, tol: float, n_threads: int,
                      absolute_tol: float | None = None):
    """scikit-learn's Lloyd from each start, one thread per start, the best kept as scikit-learn keeps it."""
    results = lloyd_refinements(Xc, starts, max_iter=max_iter, tol=tol, n_threads=n_threads, one_thread_each=True,
                                absolute_tol=absolute_tol)
    return _best_as_scikit_learn(results, k)  # in start order, whatever order the threads finished in


def _best_as_scikit_learn(results, k: int):
    """The restart ``KMeans.fit`` keeps from ``(labels, inertia, centres, n_iter)`` results in
    start order: a later one replaces the best only with a lower inertia and another clustering."""
    best = None
    for result in results:
        if best is None or (result[1] < best[1] and not _same_clustering(result[0], best[0], k)):
            best = result
    return best


def _set_fitted(clusterer: KMeans, labels, inertia, centers, n_iter, n_features: int, n_init: int, dtype) -> None:
    """Give ``clusterer`` the fitted state scikit-learn's ``KMeans.fit`` leaves."""
    k = centers.shape[0]
    n_distinct = np.unique(labels).size
    if n_distinct < k:  # scikit-learn's ConvergenceWarning, as one log line
        log.warning(
            "KMeans found %d distinct clusters for clusterer.n_clusters=%d: the data has fewer distinct "
            "points than that (duplicate rows); lower clusterer.n_clusters", n_distinct, k,
        )
    clusterer.cluster_centers_ = np.asarray(centers, dtype=dtype)
    clusterer.labels_ = np.asarray(labels, dtype=np.int32)
    clusterer.inertia_ = float(inertia)
    clusterer.n_iter_ = int(n_iter)
    clusterer.n_features_in_ = int(n_features)
    clusterer._n_features_out = k
    clusterer._n_init = n_init
    clusterer._n_threads = _openmp_threads()
    clusterer._algorithm = clusterer.algorithm


def _seeding_unsupported(clusterer: KMeans, X) -> str | None:
    """Why embclust's k-means++ kernel does not apply to this fit, or None."""
    params = clusterer.get_params(deep=False)
    if not (isinstance(params.get("init"), str) and params["init"] == "k-means++"):
        return f"init={params.get('init')!r} is not k-means++: embclust's seeding does not apply"
    if params.get("algorithm", "lloyd") != "lloyd":
        return f"algorithm={params['algorithm']!r}: embclust's seeding is followed by Lloyd only"
    if not isinstance(X, np.ndarray) and not is_rows_view(X):  # a dense array, or engine=ray's rows
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
    _set_fitted(clusterer, labels, inertia, np.asarray(centers, dtype=dtype) + mean, n_iter, X.shape[1], n_init, dtype)


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


def lloyd_refinements(
    Xc: np.ndarray, starts, max_iter: int = 300, tol: float = 1e-4, n_threads: int | None = None,
    one_thread_each: bool = False, absolute_tol: float | None = None,
):
    """(labels, inertia, centres, n_iter) of scikit-learn's Lloyd from each start, in start order.

    ``Xc`` is the centred data, as scikit-learn's ``KMeans.fit`` refines it. Its own loop
    (``_kmeans_single_lloyd``, the Cython kernel ``KMeans(init=centres, n_init=1).fit`` runs)
    is called once per start, so the data is validated, centred, copied and its tolerance
    computed once per fit instead of once per start. ``one_thread_each``: each start runs on
    one thread (a lone start on exactly two, see :func:`_threads_per_start`) with one BLAS
    thread, the starts spread over ``n_threads`` threads, so each result is the same whatever
    the thread count; otherwise each start uses ``n_threads``
    threads, one start after another. Where scikit-learn's private loop is not there (another
    release), each start is a public ``KMeans`` fit instead. ``absolute_tol``: the tolerance in
    the data's units, as scikit-learn derives it from ``tol`` (default: derived here, as it does).
    """
    from threadpoolctl import threadpool_limits

    n_threads = _openmp_threads() if n_threads is None else max(1, int(n_threads))
    starts = list(starts)
    per_start = _threads_per_start(len(starts)) if one_thread_each else n_threads
    private = _private_lloyd_loop()
    if private is None:
        def one(centers):
            with threadpool_limits(limits=per_start, user_api="openmp"):  # BLAS stays at one thread
                fitted = KMeans(
                    n_clusters=len(centers), init=centers, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd"
                ).fit(Xc)
            return fitted.labels_, fitted.inertia_, fitted.cluster_centers_, fitted.n_iter_
    else:
        _kmeans_single_lloyd, _tolerance = private
        weights = np.ones(Xc.shape[0], dtype=Xc.dtype)
        absolute_tol = _tolerance(Xc, tol) if absolute_tol is None else absolute_tol

        def one(centers):
            init = np.array(centers, dtype=Xc.dtype, order="C", copy=True)  # the loop writes into it
            return _kmeans_single_lloyd(Xc, weights, init, max_iter=max_iter, tol=absolute_tol, n_threads=per_start)

    # scikit-learn's KMeans.fit runs its loop with one BLAS thread too.
    return blocks.map_on_threads(one, starts, n_threads if one_thread_each else 1)


def _threads_per_start(n_starts: int) -> int:
    """OpenMP threads for each of ``n_starts`` runs of scikit-learn's Lloyd loop that must give the
    same bits whatever the core count: one each, or exactly LONE_START_THREADS for a lone start.

    The loop sums each thread's static share of the row chunks into its own buffer, then adds the
    buffers to zeroed centres one thread at a time (its inertia likewise). With one thread or
    exactly two, the order they finish in cannot change a bit (0 + a + b = 0 + b + a), so a fixed
    count gives the same result on one core or many; a lone start then uses two cores instead of
    leaving one idle. The two threads are asked for explicitly, so they run even in a worker
    limited to one (a joblib-launched sweep at n_init=1 then briefly runs two threads per worker).
    An OpenMP runtime that grants fewer threads than asked (OMP_THREAD_LIMIT=1, OMP_DYNAMIC=true)
    gives other bits.
    """
    return LONE_START_THREADS if n_starts == 1 else 1


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
