"""Scores in one space shared by every cell of a sweep, so cells that differ in PCA compare fairly.

Silhouette, Calinski-Harabasz and Davies-Bouldin grow or shrink with the number of dimensions, so a
cell clustered in PCA-50 and one clustered in 768 dimensions cannot be ranked by their own
scores. The reference space is the data after row normalisation and before PCA or UMAP. Its
silhouette uses the pairwise distances of a fixed sample of rows, computed once: each cell then
costs one product of that matrix with its cluster indicator.
"""

from __future__ import annotations

import numpy as np

from sklearn.metrics import pairwise_distances as pairwise_distances_sk

from embclust.scoring.metrics import NOISE

# Rows of the distance sample (a float32 matrix of rows^2 x 4 bytes: 5,000 rows = 100 MB).
DEFAULT_MAX_ROWS = 5000


def pairwise_distances(X: np.ndarray, block_rows: int = 1024) -> np.ndarray:
    """Euclidean distances between the rows of ``X`` as float32, computed centred in float64 by row block."""
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(axis=0)
    sq = np.einsum("ij,ij->i", Xc, Xc)
    n = Xc.shape[0]
    D = np.empty((n, n), dtype=np.float32)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        block = sq[start:stop, None] + sq[None, :] - 2.0 * (Xc[start:stop] @ Xc.T)
        np.maximum(block, 0.0, out=block)
        D[start:stop] = np.sqrt(block)
    np.fill_diagonal(D, 0.0)
    return D


def silhouette_from_distances(D: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row silhouette from a full distance matrix; rows labelled noise (-1) are left out.

    Returns the values of the non-noise rows, in order; equal to scikit-learn's
    ``silhouette_samples`` on those rows.
    """
    keep = np.flatnonzero(labels != NOISE)
    ids, codes = np.unique(labels[keep], return_inverse=True)
    k = ids.size
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    indicator = np.zeros((D.shape[0], k), dtype=np.float32)
    indicator[keep, codes] = 1.0
    sums = (D[keep] @ indicator).astype(np.float64)  # distance of each kept row to each cluster
    own = sums[np.arange(keep.size), codes]
    own_count = counts[codes]
    a = own / np.maximum(own_count - 1.0, 1.0)
    mean_other = sums / counts
    mean_other[np.arange(keep.size), codes] = np.inf
    b = mean_other.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s[own_count == 1] = 0.0
    return np.nan_to_num(s)


def _block_rows(n_features: int) -> int:
    return max(1024, (32 * 2**20) // (4 * max(1, n_features)))


class ReferenceSpace:
    """Reference-space data with the distance matrix of a fixed row sample, ready to score labels.

    Calinski-Harabasz and Davies-Bouldin come from per-cluster sums and each row's product with
    its centroid (two float32 matrix products per cell, by row block) and the squared row norms,
    accumulated in float64 once.
    """

    def __init__(self, X: np.ndarray, rows: np.ndarray):
        self.X = X
        self.rows = np.asarray(rows)
        self.distances = pairwise_distances(np.asarray(X[self.rows]))
        step = _block_rows(X.shape[1])
        self._step = step
        self.sq_norms = np.concatenate(
            [np.einsum("ij,ij->i", b, b) for b in (np.asarray(X[i : i + step], dtype=np.float64) for i in range(0, X.shape[0], step))]
        ) if X.shape[0] else np.zeros(0)

    def _cluster_terms(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts, centroids, distance of each clustered row to its centroid); codes -1 = skipped."""
        d = self.X.shape[1]
        sums = np.zeros((k, d), dtype=np.float64)
        for start in range(0, self.X.shape[0], self._step):
            c = codes[start : start + self._step]
            indicator = np.zeros((k, c.size), dtype=np.float32)
            sel = np.flatnonzero(c >= 0)
            indicator[c[sel], sel] = 1.0
            sums += indicator @ np.asarray(self.X[start : start + self._step], dtype=np.float32)
        counts = np.bincount(codes[codes >= 0], minlength=k).astype(np.float64)
        centroids = sums / np.maximum(counts, 1.0)[:, None]
        c32 = centroids.astype(np.float32)
        c_sq = np.einsum("ij,ij->i", centroids, centroids)
        dist = np.zeros(codes.size)
        for start in range(0, self.X.shape[0], self._step):
            c = codes[start : start + self._step]
            sel = np.flatnonzero(c >= 0)
            dots = (np.asarray(self.X[start : start + self._step], dtype=np.float32) @ c32.T).astype(np.float64)
            sq = self.sq_norms[start + sel] - 2.0 * dots[sel, c[sel]] + c_sq[c[sel]]
            dist[start + sel] = np.maximum(sq, 0.0)
        return counts, centroids, dist

    def score(self, labels: np.ndarray) -> dict[str, float]:
        """``silhouette_ref``, ``calinski_harabasz_ref``, ``davies_bouldin_ref`` of ``labels``.

        Empty when fewer than two clusters exist (noise, label -1, is left out).
        """
        labels = np.asarray(labels)
        clustered = labels != NOISE
        ids, inverse = np.unique(labels[clustered], return_inverse=True)
        k, n = ids.size, int(clustered.sum())
        if not 2 <= k < n:
            return {}
        scores: dict[str, float] = {}
        sample_labels = labels[self.rows]
        in_sample = sample_labels[sample_labels != NOISE]
        if 2 <= np.unique(in_sample).size < in_sample.size:
            values = silhouette_from_distances(self.distances, sample_labels)
            scores["silhouette_ref"] = float(values.mean())
            scores["silhouette_ref_sample_size"] = float(values.size)
        codes = np.full(labels.size, -1, dtype=np.int64)
        codes[clustered] = inverse.ravel()
        counts, centroids, sq_dist = self._cluster_terms(codes, k)
        mean = (centroids * counts[:, None]).sum(axis=0) / n
        between = float(np.sum(counts * np.sum((centroids - mean) ** 2, axis=1)))
        within = float(sq_dist[clustered].sum())
        scores["calinski_harabasz_ref"] = 1.0 if within == 0.0 else between * (n - k) / (within * (k - 1.0))
        spread = np.bincount(codes[clustered], weights=np.sqrt(sq_dist[clustered]), minlength=k) / counts
        gaps = pairwise_distances_sk(centroids)
        if np.allclose(spread, 0) or np.allclose(gaps, 0):
            scores["davies_bouldin_ref"] = 0.0
        else:
            gaps[gaps == 0] = np.inf
            scores["davies_bouldin_ref"] = float(np.mean(np.max((spread[:, None] + spread) / gaps, axis=1)))
        return scores
