"""Clustering: check a configured estimator against the data, fit it, compose the model."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
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
    if _fast_seeding_applies(clusterer, X):
        # Same seeds as scikit-learn's k-means++, computed without its per-1,000-row loop.
        clusterer.set_params(init=_KMeansPlusPlus(X))
        try:
            return np.asarray(clusterer.fit_predict(X), dtype=np.int64)
        finally:
            clusterer.set_params(init="k-means++")
    return np.asarray(clusterer.fit_predict(X), dtype=np.int64)


# Largest float64 copy of the data that k-means++ seeding keeps (beyond it: chunks).
_SEEDING_MAX_BYTES = 512 * 2**20
_SEEDING_CHUNK_BYTES = 64 * 2**20


def _fast_seeding_applies(clusterer: BaseEstimator, X: np.ndarray) -> bool:
    return (
        type(clusterer) is KMeans
        and isinstance(clusterer.init, str)
        and clusterer.init == "k-means++"
        and isinstance(X, np.ndarray)
        and X.dtype == np.float32
        and X.ndim == 2
    )


class _KMeansPlusPlus:
    """scikit-learn's greedy k-means++ seeding for float32 data, step for step.

    scikit-learn computes float32 distances in float64 over blocks of about 1,000 rows, which
    makes seeding most of a KMeans fit at tens of thousands of points. This computes the same
    float64 distances (``-2 x.y + |x|^2 + |y|^2``, rounded to float32) over the whole matrix
    at once, draws from the same random state in the same order and keeps scikit-learn's
    float32 sums, so it picks the same centers. Used for ``KMeans(init="k-means++")`` on
    float32 data without sample weights.
    """

    def __init__(self, X: np.ndarray):
        self._X = X
        self._X64 = X.astype(np.float64) if X.nbytes * 2 <= _SEEDING_MAX_BYTES else None
        self._norms64 = None

    def _sq_norms(self) -> np.ndarray:
        if self._norms64 is None:
            self._norms64 = np.concatenate(
                [np.einsum("ij,ij->i", b, b) for b in self._blocks()]
            ) if self._X64 is None else np.einsum("ij,ij->i", self._X64, self._X64)
        return self._norms64

    def _blocks(self):
        if self._X64 is not None:
            yield self._X64
            return
        step = max(1, _SEEDING_CHUNK_BYTES // (8 * self._X.shape[1]))
        for start in range(0, self._X.shape[0], step):
            yield self._X[start : start + step].astype(np.float64)

    def _sq_distances(self, rows: np.ndarray) -> np.ndarray:
        """float32 squared distances from ``X[rows]`` to every point, as scikit-learn rounds them."""
        C = self._X[rows].astype(np.float64)
        cc = np.einsum("ij,ij->i", C, C)[:, None]
        yy = self._sq_norms()
        out = np.empty((len(rows), self._X.shape[0]), dtype=np.float32)
        start = 0
        for block in self._blocks():
            stop = start + block.shape[0]
            d = -2 * (C @ block.T)
            d += cc
            d += yy[None, start:stop]
            out[:, start:stop] = d.astype(np.float32, copy=False)
            start = stop
        np.maximum(out, 0, out=out)
        return out

    def __call__(self, X: np.ndarray, n_clusters: int, random_state: np.random.RandomState) -> np.ndarray:
        if X is not self._X and not np.shares_memory(X, self._X):
            self.__init__(X)
        X = self._X
        n_samples = X.shape[0]
        sample_weight = np.ones(n_samples, dtype=X.dtype)
        n_local_trials = 2 + int(np.log(n_clusters))
        center_id = random_state.choice(n_samples, p=sample_weight / sample_weight.sum())
        ids = [center_id]
        closest_dist_sq = self._sq_distances(np.array([center_id]))
        current_pot = closest_dist_sq @ sample_weight
        for _ in range(1, n_clusters):
            rand_vals = random_state.uniform(size=n_local_trials) * current_pot
            candidate_ids = np.searchsorted(np.cumsum(sample_weight * closest_dist_sq), rand_vals)
            np.clip(candidate_ids, None, closest_dist_sq.size - 1, out=candidate_ids)
            distance_to_candidates = self._sq_distances(candidate_ids)
            np.minimum(closest_dist_sq, distance_to_candidates, out=distance_to_candidates)
            candidates_pot = distance_to_candidates @ sample_weight.reshape(-1, 1)
            best = np.argmin(candidates_pot)
            current_pot = candidates_pot[best]
            closest_dist_sq = distance_to_candidates[best]
            ids.append(candidate_ids[best])
        return X[np.asarray(ids)]


def build_model(preprocessing: Pipeline, clusterer: BaseEstimator) -> Pipeline:
    """Chain the fitted preprocessing steps and the fitted clusterer into one Pipeline."""
    return Pipeline([*preprocessing.steps, ("cluster", clusterer)])


def supports_predict(model: Pipeline) -> bool:
    """Whether new points can be assigned to clusters (KMeans yes; Agglomerative, HDBSCAN no)."""
    return hasattr(model.steps[-1][1], "predict")
