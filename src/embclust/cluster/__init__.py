"""Cluster stage: check a configured estimator, fit it, compose the model."""

from embclust.cluster.fit import build_model, check_clusterer, fit_clusterer, supports_predict

__all__ = ["build_model", "check_clusterer", "fit_clusterer", "supports_predict"]
