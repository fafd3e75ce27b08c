"""Near-duplicate rows: pairs whose cosine similarity reaches a threshold.

Found with a nearest-neighbour index, never an n x n matrix: exact radius search (scikit-learn,
distances computed in bounded chunks) up to ``exact_max_rows`` rows, approximate k-nearest
neighbours (pynndescent, as used by UMAP) above.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)


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
    """Array of shape (n_pairs, 3): row i, row j (i < j), cosine similarity >= ``threshold``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    Xn = _unit_rows(X)
    n = Xn.shape[0]
    # On unit vectors, cosine >= t  <=>  euclidean distance <= sqrt(2 - 2t).
    radius = float(np.sqrt(max(2.0 - 2.0 * threshold, 0.0))) + 1e-6
    if n <= exact_max_rows:
        from sklearn.neighbors import NearestNeighbors

        index = NearestNeighbors(radius=radius, algorithm="brute").fit(Xn)
        graph = index.radius_neighbors_graph(Xn, mode="distance", sort_results=False)
    else:
        from pynndescent import NNDescent

        log.debug("duplicates: approximate %d-NN index over %d rows", n_neighbors, n)
        index = NNDescent(Xn, n_neighbors=n_neighbors + 1, metric="euclidean", random_state=seed, verbose=False)
        nbrs, dists = index.neighbor_graph
        rows = np.repeat(np.arange(n), nbrs.shape[1])
        keep = (dists.ravel() <= radius) & (nbrs.ravel() >= 0)
        graph = coo_matrix((dists.ravel()[keep], (rows[keep], nbrs.ravel()[keep])), shape=(n, n)).tocsr()
    coo = graph.tocoo()
    off = coo.row != coo.col
    if not off.any():
        return np.empty((0, 3))
    i, j = np.minimum(coo.row[off], coo.col[off]), np.maximum(coo.row[off], coo.col[off])
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
