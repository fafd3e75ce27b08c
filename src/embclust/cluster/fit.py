"""Clustering: check a configured estimator against the data, fit it, compose the model."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from embclust.errors import ConfigError


def check_clusterer(clusterer: BaseEstimator, n_samples: int) -> None:
    """Raise :class:`ConfigError` when the estimator's sizes cannot fit ``n_samples`` points."""
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


def fit_clusterer(clusterer: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Fit ``clusterer`` on ``X`` and return integer labels (``-1`` marks noise)."""
    check_clusterer(clusterer, X.shape[0])
    return np.asarray(clusterer.fit_predict(X), dtype=np.int64)


def build_model(preprocessing: Pipeline, clusterer: BaseEstimator) -> Pipeline:
    """Chain the fitted preprocessing steps and the fitted clusterer into one Pipeline."""
    return Pipeline([*preprocessing.steps, ("cluster", clusterer)])


def supports_predict(model: Pipeline) -> bool:
    """Whether new points can be assigned to clusters (KMeans yes; Agglomerative, HDBSCAN no)."""
    return hasattr(model.steps[-1][1], "predict")
