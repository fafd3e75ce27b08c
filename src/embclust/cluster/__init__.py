"""Cluster stage: check a configured estimator, fit it (KMeans: restarts on a sample, refined on all rows), compose the model."""

from embclust.cluster.fit import FittedClustering, build_model, check_clusterer, fit, fit_clusterer, supports_predict
from embclust.cluster.kmeans import check_implementation, limit_threads

__all__ = [
    "FittedClustering",
    "build_model",
    "check_clusterer",
    "check_implementation",
    "fit",
    "fit_clusterer",
    "limit_threads",
    "supports_predict",
]
