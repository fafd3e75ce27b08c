"""Scores in one space shared by every cell of a sweep, so cells that differ in PCA compare fairly.

Silhouette, Calinski-Harabasz and Davies-Bouldin grow or shrink with the number of dimensions, so a
cell clustered in PCA-50 and one clustered in 768 dimensions cannot be ranked by their own
scores. The reference space is the data after row normalisation and before PCA or UMAP. Its
scores are computed on the sweep's shared sample of rows, whose pairwise distances are computed
once: each cell then costs one product of that matrix with its cluster indicator.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from embclust.scoring.metrics import NOISE, ClusterStats

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
    rows = D if keep.size == D.shape[0] else D[keep]  # no 100 MB copy when there is no noise
    sums = (rows @ indicator).astype(np.float64)  # distance of each kept row to each cluster
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


class ReferenceSpace:
    """The shared sample of rows in the reference space, with their distance matrix, ready to score.

    All three scores are computed on the same ``rows`` (the sweep's scoring sample, at most
    ``metrics.reference_sample_size`` of them), so every cell costs one product of the distance
    matrix with its cluster indicator and one pass over the sample for CH and DB.
    """

    def __init__(self, X: np.ndarray, rows: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None):
        """``X`` is the data before row normalisation, ``transform`` the normalisation (row-wise)."""
        self.rows = np.asarray(rows)
        sample = np.asarray(X[self.rows])
        self.X = np.asarray(sample if transform is None else transform(sample), dtype=np.float32)
        self.distances = pairwise_distances(self.X)

    def score(self, labels: np.ndarray) -> dict[str, float]:
        """``silhouette_ref``, ``calinski_harabasz_ref``, ``davies_bouldin_ref`` of ``labels`` (all rows).

        Empty when the sample holds fewer than two clusters (noise, label -1, is left out).
        """
        sample_labels = np.asarray(labels)[self.rows]
        clustered = sample_labels[sample_labels != NOISE]
        if not 2 <= np.unique(clustered).size < clustered.size:
            return {}
        values = silhouette_from_distances(self.distances, sample_labels)
        stats = ClusterStats(self.X, sample_labels, ignore_noise=True)
        return {
            "silhouette_ref": float(values.mean()),
            "calinski_harabasz_ref": stats.calinski_harabasz(),
            "davies_bouldin_ref": stats.davies_bouldin(),
            "reference_sample_size": float(values.size),
        }
