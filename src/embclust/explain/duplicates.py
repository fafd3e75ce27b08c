"""Near-duplicate rows: pairs whose cosine similarity reaches a threshold.

Found with a nearest-neighbour index, never an n x n matrix: exact k-nearest neighbours
(scikit-learn, distances computed in bounded chunks) up to ``exact_max_rows`` rows, approximate
k-nearest neighbours (pynndescent, as used by UMAP) above. Each row contributes at most
``n_neighbors + 1`` pairs, so the result is bounded by n x (n_neighbors + 1) whatever the data.

On data with few columns (tabular features, 2-d points) cosine similarity says nothing about
duplicates: thousands of unrelated points share a direction. ``skip_reason`` says when to skip.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)


# At or below this many columns the check is skipped (see the module docstring).
MIN_FEATURES = 17


# Random pairs of rows checked for a common direction.
RANDOM_PAIRS = 2000


def skip_reason(n_features: int, X: np.ndarray | None = None, threshold: float = 0.98, from_tabular: bool = False,
                seed: int = 0) -> str | None:
    """One line saying why the near-duplicate check is skipped for this data, or None.

    Decided by what the data is, not by its width alone: few columns, features from the tabular
    loader, or rows that all point the same way from the origin (the median cosine of
    ``RANDOM_PAIRS`` seeded random pairs of rows at least ``preprocess.NARROW_CONE_COSINE``), where
    unrelated rows reach the threshold. Tight clusters are not such data: pairs across clusters
    keep the median low, and pairs within a cluster are the near-duplicates the check reports.
    """
    if n_features < MIN_FEATURES:
        return (
            f"near-duplicates skipped: data with {n_features} columns (<= {MIN_FEATURES - 1}); "
            "cosine similarity does not identify duplicates there"
        )
    if from_tabular:
        return ("near-duplicates skipped: tabular features (dataset=tabular); cosine similarity between rows of "
                "user features does not identify duplicates")
    if X is not None and X.shape[0] >= 2:
        from embclust.preprocess import NARROW_CONE_COSINE, median_pair_cosine

        cosine = median_pair_cosine(X, RANDOM_PAIRS, seed)
        if cosine >= NARROW_CONE_COSINE:
            return (
                f"near-duplicates skipped: the rows all point the same way from the origin (median cosine {cosine:.3f} "
                f"between {RANDOM_PAIRS} random pairs of rows), so unrelated rows reach cosine {threshold:g}; standardise "
                "the data first, or raise analysis.duplicates.threshold"
            )
    return None


def _unit_rows(X: np.ndarray) -> np.ndarray:
    Xn = np.asarray(X, dtype=np.float32).copy()
    norms = np.linalg.norm(Xn, axis=1, keepdims=True)
    Xn /= np.where(norms == 0, 1, norms)
    return Xn


def near_duplicate_pairs(
    X: np.ndarray,
    threshold: float = 0.98,
    exact_max_rows: int = 20_000,
    n_neighbors: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Array of shape (n_pairs, 3): row i, row j (i < j), cosine similarity >= ``threshold``.

    Each row is paired only with its ``n_neighbors + 1`` nearest rows, so there are at most
    n x (n_neighbors + 1) pairs.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    Xn = _unit_rows(X)
    n = Xn.shape[0]
    # On unit vectors, cosine >= t  <=>  euclidean distance <= sqrt(2 - 2t).
    radius = float(np.sqrt(max(2.0 - 2.0 * threshold, 0.0))) + 1e-6
    if n < 2:
        return np.empty((0, 3))
    if n <= exact_max_rows:
        from sklearn.neighbors import NearestNeighbors

        # k nearest, not every row within the radius: a radius search on clumped data returns
        # millions of pairs (4.2 million for 5,000 2-d points).
        dists, nbrs = NearestNeighbors(n_neighbors=min(n_neighbors + 1, n), algorithm="brute").fit(Xn).kneighbors(Xn)
    else:
        from pynndescent import NNDescent

        log.debug("duplicates: approximate %d-NN index over %d rows", n_neighbors, n)
        index = NNDescent(Xn, n_neighbors=n_neighbors + 1, metric="euclidean", random_state=seed, verbose=False)
        nbrs, dists = index.neighbor_graph
    rows = np.repeat(np.arange(n), nbrs.shape[1])
    cols = nbrs.ravel()
    keep = (dists.ravel() <= radius) & (cols >= 0) & (cols != rows)
    if not keep.any():
        return np.empty((0, 3))
    i, j = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    pairs = np.unique(np.column_stack([i, j]), axis=0)
    sims = np.einsum("ij,ij->i", Xn[pairs[:, 0]], Xn[pairs[:, 1]])
    keep = sims >= threshold - 1e-6
    return np.column_stack([pairs[keep], sims[keep]])


def rows_to_drop(pairs: np.ndarray, n: int) -> np.ndarray:
    """Rows to drop so that each group of near-duplicates keeps only its first row."""
    if len(pairs) == 0:
        return np.empty(0, dtype=np.int64)
    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    graph = coo_matrix((np.ones(i.size), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n))
    return np.flatnonzero(np.arange(n) != first[component])
