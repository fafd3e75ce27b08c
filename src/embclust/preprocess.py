"""Preprocessing: row normalisation and PCA as one scikit-learn Pipeline."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from embclust.errors import ConfigError

NORMALIZE_CHOICES = ("l2", "standard", "none")


def build_preprocessing(
    normalize: str = "l2",
    pca_components: int | None = None,
    svd_solver: str = "auto",
    seed: int = 0,
    umap_components: int | None = None,
    umap_n_neighbors: int = 15,
    umap_min_dist: float = 0.0,
    umap_metric: str = "euclidean",
) -> Pipeline:
    """Return an unfitted ``Pipeline(normalize, pca, umap)``; unused steps are ``"passthrough"``.

    ``umap_components`` adds a UMAP reduction before clustering (density clustering of tabular
    or text features, as in the UMAP -> HDBSCAN recipe); it is separate from the 2-D map.
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(
            f"preprocess.normalize={normalize!r} is not allowed (allowed: {', '.join(NORMALIZE_CHOICES)})"
        )
    if pca_components is not None and (
        isinstance(pca_components, bool) or not isinstance(pca_components, int) or pca_components < 1
    ):
        raise ConfigError(f"preprocess.pca_components={pca_components!r} must be null or an integer >= 1")
    scaler = {"l2": Normalizer(norm="l2"), "standard": StandardScaler(), "none": "passthrough"}[normalize]
    pca = (
        "passthrough"
        if pca_components is None
        else PCA(n_components=pca_components, svd_solver=svd_solver, random_state=seed)
    )
    if umap_components is not None and (not isinstance(umap_components, int) or umap_components < 1):
        raise ConfigError(f"preprocess.umap_components={umap_components!r} must be null or an integer >= 1")
    if umap_components is None:
        reduce = "passthrough"
    else:
        from umap import UMAP

        reduce = UMAP(
            n_components=umap_components,
            n_neighbors=umap_n_neighbors,
            min_dist=umap_min_dist,
            metric=umap_metric,
            random_state=seed,
            n_jobs=1,
        )
    return Pipeline([("normalize", scaler), ("pca", pca), ("umap", reduce)])


def check_preprocessing(pipeline: Pipeline, n_samples: int, n_features: int) -> None:
    """Raise :class:`ConfigError` when PCA asks for more components than the data has."""
    pca = pipeline.named_steps["pca"]
    if isinstance(pca, PCA) and pca.n_components > min(n_samples, n_features):
        raise ConfigError(
            f"preprocess.pca_components={pca.n_components} exceeds min(n_samples, n_features)"
            f"={min(n_samples, n_features)} for data of shape ({n_samples}, {n_features})"
        )


def fit_preprocessing(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """Fit ``pipeline`` on ``X`` and return the transformed matrix as float32."""
    check_preprocessing(pipeline, X.shape[0], X.shape[1])
    Xt = pipeline.fit_transform(X)
    return np.asarray(Xt, dtype=np.float32)
