"""Clustering: check a configured estimator against the data, fit it, compose the model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.pipeline import Pipeline

from embclust.cluster import kmeans
from embclust.errors import ConfigError
from embclust.validate import check_estimator_params

log = logging.getLogger(__name__)


@dataclass
class FittedClustering:
    """Labels of a fit, the fitted scikit-learn estimator, and which implementation ran."""

    labels: np.ndarray  # int64, -1 marks noise
    estimator: BaseEstimator
    implementation: str  # e.g. "embclust-sample-restarts", "sklearnex", "scikit-learn"
    sample_size: int | None = None  # rows KMeans's restarts ran on; None: all rows
    restarts: int | None = None  # KMeans restarts run on the sample (auto)
    refinement: str | None = None  # how auto refined on all rows (kmeans.IN_MEMORY or PASSES)


def check_clusterer(clusterer: BaseEstimator, n_samples: int) -> None:
    """Raise :class:`ConfigError` when a parameter is not allowed or a size cannot fit ``n_samples`` points."""
    check_estimator_params(clusterer, "clusterer")
    params = clusterer.get_params(deep=False)
    n_clusters = params.get("n_clusters")
    if n_clusters is not None and not (2 <= n_clusters < n_samples):
        raise ConfigError(
            f"clusterer.n_clusters={n_clusters} must be >= 2 and < the number of samples ({n_samples})"
        )
    min_cluster_size = params.get("min_cluster_size")
    if min_cluster_size is not None and not (2 <= min_cluster_size <= n_samples):
        raise ConfigError(
            f"clusterer.min_cluster_size={min_cluster_size} must be >= 2 and <= the number of samples "
            f"({n_samples})"
        )
    min_samples = params.get("min_samples")
    if type(clusterer).__name__ == "HDBSCAN" and min_samples is not None and min_samples > n_samples:
        # hdbscan fits, then fails building its prediction data ("k must be less than or equal to ...")
        raise ConfigError(f"clusterer.min_samples={min_samples} must be <= the number of samples ({n_samples})")


def fit_input(clusterer: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """``X`` as ``clusterer`` takes it: float64 for hdbscan's ``algorithm=generic`` (bounded rows), as is otherwise."""
    if type(clusterer).__module__.startswith("hdbscan") and getattr(clusterer, "algorithm", None) == "generic":
        return np.asarray(X, dtype=np.float64)  # its distance-matrix path takes doubles only
    return X


def fit(
    clusterer: BaseEstimator, X: np.ndarray, implementation: str = "auto", sample: kmeans.SampleSettings | None = None,
    passes=None,
) -> FittedClustering:
    """Fit ``clusterer`` on ``X`` in place.

    ``implementation`` is ``auto`` (restarts on a sample of ``sample.size(k)`` rows, refined on
    all rows), ``embclust`` (scikit-learn's starts and Lloyd on all rows), ``sklearnex`` or
    ``scikit-learn`` (see :mod:`embclust.cluster.kmeans`); it only changes how an exact
    ``sklearn.cluster.KMeans`` is fitted.
    """
    implementation = kmeans.check_implementation(implementation)
    check_clusterer(clusterer, X.shape[0])
    if type(clusterer) is KMeans:  # subclasses may override fit: leave them to their own
        ran = kmeans.fit_kmeans(clusterer, X, implementation, sample, passes)
        return FittedClustering(
            np.asarray(clusterer.labels_, dtype=np.int64), clusterer, ran.implementation, ran.sample_size, ran.restarts,
            ran.refinement,
        )
    library = library_of(clusterer)
    if implementation in ("embclust", "sklearnex"):  # auto and scikit-learn mean this for any clusterer
        log.warning("cluster_implementation=%s applies to clusterer=kmeans only: %s is fitted by its own library "
                    "(tag cluster_implementation=%s)", implementation, type(clusterer).__name__, library)
    labels = np.asarray(clusterer.fit_predict(fit_input(clusterer, X)), dtype=np.int64)
    _say_if_k_exceeds_distinct_rows(clusterer, X, labels)
    return FittedClustering(labels, clusterer, library)


def library_of(estimator) -> str:
    """The package whose code fits ``estimator``, as its distribution is named ("scikit-learn", "hdbscan")."""
    root = type(estimator).__module__.split(".")[0]
    return {"sklearn": "scikit-learn", "sklearnex": "sklearnex", "daal4py": "sklearnex"}.get(root, root)


def _say_if_k_exceeds_distinct_rows(clusterer: BaseEstimator, X: np.ndarray, labels: np.ndarray) -> None:
    """One warning when ``n_clusters`` is more than the data's distinct rows (duplicate rows), as
    KMeans gives: MiniBatchKMeans returns fewer clusters, agglomerative splits identical rows."""
    k = clusterer.get_params(deep=False).get("n_clusters")
    if not isinstance(k, int) or isinstance(k, bool):
        return
    name = type(clusterer).__name__
    found = np.unique(labels[labels >= 0]).size
    if found < k:
        log.warning("%s found %d clusters for clusterer.n_clusters=%d (the data has fewer distinct points than that, "
                    "or clusters were left empty); lower clusterer.n_clusters", name, found, k)
    elif isinstance(clusterer, AgglomerativeClustering):  # rows bounded by the O(n^2) fit itself
        n_distinct = np.unique(np.asarray(X), axis=0).shape[0]
        if n_distinct < k:
            log.warning("%s split identical rows between clusters: the data has %d distinct rows for "
                        "clusterer.n_clusters=%d (duplicate rows); lower clusterer.n_clusters to %d or fewer",
                        name, n_distinct, k, n_distinct)


def fit_clusterer(clusterer: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Fit ``clusterer`` on ``X`` and return integer labels (``-1`` marks noise)."""
    return fit(clusterer, X).labels


# Centres this far from the origin, against their distances to each other (squared), lose about
# four of float32's seven digits in scikit-learn's distances |x|^2 + |c|^2 - 2 x.c.
CENTRE_OFFSET_RATIO = 1e4


def build_model(preprocessing: Pipeline, clusterer: BaseEstimator) -> Pipeline:
    """Chain the fitted preprocessing steps and the fitted clusterer into one Pipeline.

    Where KMeans centres sit far from the origin against their spread (features with a large
    common offset and no scaling or PCA), a centring step (``StandardScaler(with_std=False)``)
    moves rows and centres to the centres' mean first: ``predict`` then assigns the rows the fit
    labelled as the fit did (its passes centre the rows too), where scikit-learn's float32
    distances on raw rows put up to 90% of them on another centre. Distances, ``transform`` and
    ``score`` are unchanged by the move.
    """
    centres = getattr(clusterer, "cluster_centers_", None)
    if isinstance(clusterer, KMeans) and centres is not None and _offset_dominates(centres):
        import copy

        from sklearn.preprocessing import StandardScaler

        shift = np.asarray(centres, dtype=np.float64).mean(axis=0)
        centring = StandardScaler(with_std=False).fit(shift[None, :])
        moved = copy.deepcopy(clusterer)
        moved.cluster_centers_ = (np.asarray(centres, dtype=np.float64) - shift).astype(centres.dtype)
        return Pipeline([*preprocessing.steps, ("centre", centring), ("cluster", moved)])
    return Pipeline([*preprocessing.steps, ("cluster", clusterer)])


def _offset_dominates(centres: np.ndarray) -> bool:
    c = np.asarray(centres, dtype=np.float64)
    shift = c.mean(axis=0)
    spread = float(((c - shift) ** 2).sum(axis=1).mean())
    offset = float((shift**2).sum())
    return offset > CENTRE_OFFSET_RATIO * spread if spread > 0 else offset > 0


def supports_predict(model: Pipeline) -> bool:
    """Whether new points can be assigned to clusters (KMeans yes; Agglomerative, HDBSCAN no)."""
    return hasattr(model.steps[-1][1], "predict")
