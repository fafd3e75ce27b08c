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


class TriangularDistances:
    """Euclidean distances between the rows of ``X``, float32, stored once per pair.

    Rows are cut into blocks; block ``i`` keeps the distances from its rows to its own rows and to
    every later row (``rows x (n - start)``), so the whole is about ``n^2 / 2`` floats, half a
    full matrix (5,000 rows: 55 MB instead of 100 MB). Distances are computed centred in float64,
    one block at a time, and rounded to float32.
    """

    def __init__(self, X: np.ndarray, block_rows: int = 512):
        Xc = np.array(X, dtype=np.float64)
        Xc -= Xc.mean(axis=0)
        sq = np.einsum("ij,ij->i", Xc, Xc)
        self.n = n = Xc.shape[0]
        self.starts = list(range(0, n, max(1, int(block_rows))))
        self.blocks: list[np.ndarray] = []
        for start in self.starts:
            stop = min(start + block_rows, n)
            block = Xc[start:stop] @ Xc[start:].T
            block *= -2.0
            block += sq[start:stop, None]
            block += sq[None, start:]
            np.maximum(block, 0.0, out=block)
            np.sqrt(block, out=block)
            block[np.arange(stop - start), np.arange(stop - start)] = 0.0  # self-distance: exactly 0
            self.blocks.append(block.astype(np.float32))

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def sums_by_cluster(self, indicator: np.ndarray, n_threads: int | None = None) -> np.ndarray:
        """``D @ indicator`` (float64) without the full matrix: each stored pair counts both ways.

        Each block's two products run on one of ``n_threads`` threads (default: the OpenMP
        threads scikit-learn would use) with one BLAS thread, since OpenBLAS's float32 GEMM
        rounds by its thread count; they are added in block order, so the sums are the same
        bits whatever the number of threads a cell's worker got.
        """
        from embclust.blocks import available_threads, map_on_threads

        indicator = np.asarray(indicator, dtype=np.float32)
        out = np.zeros((self.n, indicator.shape[1]), dtype=np.float64)

        def products(i: int):
            start, block = self.starts[i], self.blocks[i]
            stop = start + block.shape[0]
            # (this block's rows, every row from its start); (later rows, this block's rows)
            lower = block[:, stop - start :].T @ indicator[start:stop] if stop < self.n else None
            return block @ indicator[start:], lower

        threads = available_threads() if n_threads is None else max(1, int(n_threads))
        # A few blocks' products at a time (each holds up to n x k floats), at most about 256 MB.
        window = max(1, min(2 * threads, (256 * 2**20) // (4 * self.n * max(1, indicator.shape[1]))))
        for first in range(0, len(self.blocks), window):
            ids = range(first, min(first + window, len(self.blocks)))
            for i, (upper, lower) in zip(ids, map_on_threads(products, ids, threads)):
                start = self.starts[i]
                stop = start + self.blocks[i].shape[0]
                out[start:stop] += upper
                if lower is not None:
                    out[stop:] += lower
        return out

    def full(self) -> np.ndarray:
        """The whole ``n x n`` matrix (tests)."""
        D = np.zeros((self.n, self.n), dtype=np.float32)
        for start, block in zip(self.starts, self.blocks):
            stop = start + block.shape[0]
            D[start:stop, start:] = block
            D[start:, start:stop] = block.T
        return D


def silhouette_from_distances(D: TriangularDistances, labels: np.ndarray) -> np.ndarray:
    """Per-row silhouette from the sample's distances; rows labelled noise (-1) are left out.

    Returns the values of the non-noise rows, in order; equal to scikit-learn's
    ``silhouette_samples`` on those rows.
    """
    keep = np.flatnonzero(labels != NOISE)
    ids, codes = np.unique(labels[keep], return_inverse=True)
    k = ids.size
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    indicator = np.zeros((D.n, k), dtype=np.float32)
    indicator[keep, codes] = 1.0
    sums = D.sums_by_cluster(indicator)[keep]  # distance of each kept row to each cluster
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
        self.distances = TriangularDistances(self.X)

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
