"""k-means++ seeding that draws scikit-learn's starting centres, 2-3x faster than its own.

scikit-learn's ``_kmeans_plusplus`` spends its time in ``_euclidean_distances``: for float32
data it upcasts every chunk of rows to float64 again for every candidate centre, in a Python
loop over chunks. Here the (centred) data is converted to float64 once per fit and each step is
one GEMM of the candidates against all rows. Every other operation, and every random draw, is
scikit-learn's own, in the same order and precision, so a seeded fit starts from the centres
scikit-learn's ``KMeans(random_state=seed)`` starts from.

Tested against ``sklearn.cluster.kmeans_plusplus`` on the same inputs (tests/test_cluster.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.extmath import row_norms

IMPLEMENTATION = "embclust-kmeans++"
# Above this many bytes the float64 copy of the data is not kept: rows are converted per block
# and step (slower, bounded memory).
MAX_FLOAT64_COPY_BYTES = 128 * 2**20
_BLOCK_ROWS = 16_384


def _uses_float64_cumsum() -> bool:
    """Whether the installed scikit-learn sums the potential with ``stable_cumsum`` (float64).

    Older scikit-learn releases did; 1.9 uses ``np.cumsum`` in the data's precision.
    """
    try:
        import inspect

        from sklearn.cluster import _kmeans

        return "stable_cumsum" in inspect.getsource(_kmeans._kmeans_plusplus)
    except (ImportError, OSError, TypeError, AttributeError):
        return False


_FLOAT64_CUMSUM: bool | None = None


class _Distances:
    """Squared distances from a few rows of ``X`` to all rows, as scikit-learn's ``_euclidean_distances`` gives them.

    scikit-learn computes ``-2 x.y + |x|^2 + |y|^2`` in float64, then rounds to ``X``'s dtype and
    clips at 0. For float32 data it ignores the float32 ``x_squared_norms`` that ``KMeans`` hands
    it and takes both norms from the float64 copies of the rows, so the norms here are always
    float64 norms of float64 rows.
    """

    def __init__(self, X: np.ndarray):
        self.X = X
        self.X64 = None
        if X.dtype == np.float64:
            self.X64 = X
            self.yy = row_norms(X, squared=True)
            return
        if X.size * 8 <= MAX_FLOAT64_COPY_BYTES:
            self.X64 = X.astype(np.float64)
            self.yy = row_norms(self.X64, squared=True)
        else:
            self.yy = np.concatenate([
                row_norms(X[s : s + _BLOCK_ROWS].astype(np.float64), squared=True)
                for s in range(0, X.shape[0], _BLOCK_ROWS)
            ])

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        C = np.asarray(self.X[ids], dtype=np.float64)
        if self.X64 is not None:
            D = C @ self.X64.T
        else:
            D = np.empty((C.shape[0], self.X.shape[0]), dtype=np.float64)
            for s in range(0, self.X.shape[0], _BLOCK_ROWS):
                D[:, s : s + _BLOCK_ROWS] = C @ self.X[s : s + _BLOCK_ROWS].astype(np.float64).T
        D *= -2.0
        D += np.einsum("ij,ij->i", C, C)[:, None]
        D += self.yy[None, :]
        out = D.astype(self.X.dtype, copy=False)
        np.maximum(out, 0, out=out)
        return out


def kmeans_plusplus(
    X: np.ndarray,
    n_clusters: int,
    random_state: np.random.RandomState,
    n_local_trials: int | None = None,
    distances: _Distances | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-means++ centres and their row indices, as ``sklearn.cluster.kmeans_plusplus``.

    ``X`` is what scikit-learn's ``KMeans.fit`` seeds on: the data minus its column mean, float32
    or float64. ``random_state`` is advanced exactly as scikit-learn advances it, so calling this
    ``n_init`` times on one ``RandomState`` gives the starts of ``KMeans(n_init=...)``.
    """
    global _FLOAT64_CUMSUM
    if _FLOAT64_CUMSUM is None:
        _FLOAT64_CUMSUM = _uses_float64_cumsum()
    n_samples, n_features = X.shape
    dist = distances or _Distances(X)
    sample_weight = np.ones(n_samples, dtype=X.dtype)
    centers = np.empty((n_clusters, n_features), dtype=X.dtype)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))

    center_id = random_state.choice(n_samples, p=sample_weight / sample_weight.sum())
    indices = np.full(n_clusters, -1, dtype=int)
    centers[0] = X[center_id]
    indices[0] = center_id
    closest_dist_sq = dist(np.array([center_id]))
    current_pot = closest_dist_sq @ sample_weight
    for c in range(1, n_clusters):
        rand_vals = random_state.uniform(size=n_local_trials) * current_pot
        weighted = sample_weight * closest_dist_sq
        cumulative = np.cumsum(weighted, dtype=np.float64) if _FLOAT64_CUMSUM else np.cumsum(weighted)
        candidate_ids = np.searchsorted(cumulative, rand_vals)
        np.clip(candidate_ids, None, closest_dist_sq.size - 1, out=candidate_ids)
        distance_to_candidates = dist(candidate_ids)
        np.minimum(closest_dist_sq, distance_to_candidates, out=distance_to_candidates)
        candidates_pot = distance_to_candidates @ sample_weight.reshape(-1, 1)
        best = np.argmin(candidates_pot)
        current_pot = candidates_pot[best]
        closest_dist_sq = distance_to_candidates[best]
        best = candidate_ids[best]
        centers[c] = X[best]
        indices[c] = best
    return centers, indices


def distances_for(X: np.ndarray) -> _Distances:
    """The distance helper for repeated seeding on one ``X`` (the float64 copy is made once)."""
    return _Distances(X)
