"""k-means++ seeding that draws scikit-learn's starting centres, 2-3x faster than its own.

scikit-learn's ``_kmeans_plusplus`` spends its time in ``_euclidean_distances``: for float32
data it upcasts every chunk of rows to float64 again for every candidate centre, in a Python
loop over chunks. Here the (centred) data is converted to float64 once per fit and each step is
one GEMM of the candidates against all rows. Every other operation, and every random draw, is
scikit-learn's own, in the same order and precision, so a seeded fit starts from the centres
scikit-learn's ``KMeans(random_state=seed)`` starts from.

:func:`kmeans_plusplus_starts` draws the ``n_init`` starts of one fit in lockstep. Each start's
random draws do not depend on the data (one ``choice`` for the first centre, then
``n_local_trials`` uniforms per centre, scaled by the potential afterwards), so they are drawn
first, in scikit-learn's order; then every step computes the candidates of all starts in one
GEMM. The GEMM with a few candidates is memory-bound (the float64 rows are read once per GEMM):
on 42,000 x 100, k = 50, ten starts take 0.6 s in lockstep and 1.15 s one after another. Each
distance block also takes two passes fewer than written out (-2 folded into the candidates,
the last sum rounded straight into the output).

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
# Each step's float64 sums are made in blocks of about this many bytes.
_SUM_BLOCK_BYTES = 4 * 2**20
# Lockstep starts share one distance block of (starts x trials) x rows float64 at most this big.
MAX_LOCKSTEP_BYTES = 32 * 2**20


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
    """Squared distances from a few rows of ``X - mean`` to all rows, as scikit-learn's ``_euclidean_distances`` gives them.

    scikit-learn computes ``-2 x.y + |x|^2 + |y|^2`` in float64, then rounds to ``X``'s dtype and
    clips at 0. For float32 data it ignores the float32 ``x_squared_norms`` that ``KMeans`` hands
    it and takes both norms from the float64 copies of the rows, so the norms here are always
    float64 norms of float64 rows.

    ``mean`` (optional): the rows are ``X - mean``, computed in ``X``'s dtype as scikit-learn's
    ``KMeans.fit`` centres them, block by block into the float64 copy: no centred copy of ``X``
    in its own dtype is held while seeding.
    """

    def __init__(self, X: np.ndarray, mean: np.ndarray | None = None):
        self.X, self.mean, self.dtype = X, mean, X.dtype
        self.n_samples = X.shape[0]
        self.X64 = None
        if X.dtype == np.float64 and mean is None:
            self.X64 = X
            self.yy = row_norms(X, squared=True)
        elif X.size * 8 <= MAX_FLOAT64_COPY_BYTES:
            self.X64 = np.empty(X.shape, dtype=np.float64)
            for s in range(0, self.n_samples, _BLOCK_ROWS):
                self.X64[s : s + _BLOCK_ROWS] = self._block(s, s + _BLOCK_ROWS)
            self.yy = row_norms(self.X64, squared=True)
        else:
            self.yy = np.concatenate([
                row_norms(self._block(s, s + _BLOCK_ROWS).astype(np.float64), squared=True)
                for s in range(0, self.n_samples, _BLOCK_ROWS)
            ])

    def _block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``X - mean`` in ``X``'s dtype."""
        rows = self.X[start:stop]
        return rows if self.mean is None else rows - self.mean

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``X - mean`` in ``X``'s dtype (exact: float32 to float64 and back is lossless)."""
        if self.X64 is not None:
            return self.X64[ids].astype(self.dtype, copy=False)
        rows = self.X[ids]
        return rows if self.mean is None else rows - self.mean

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        # By blocks of rows, so that the float64 sums never exist at full size (the output, in
        # the data's dtype, does); -2 is folded into the candidates (exact, a power of two) and
        # the last sum rounds straight into the output's dtype (the float64 sum, then one
        # rounding, as astype would).
        C = np.asarray(self.rows(ids), dtype=np.float64)
        C_minus_2 = -2.0 * C
        cc = np.einsum("ij,ij->i", C, C)[:, None]
        out = np.empty((C.shape[0], self.n_samples), dtype=self.dtype)
        step = max(1024, min(_BLOCK_ROWS, _SUM_BLOCK_BYTES // (8 * max(1, C.shape[0]))))
        for s in range(0, self.n_samples, step):
            rows = self.X64[s : s + step] if self.X64 is not None else self._block(s, s + step).astype(np.float64)
            D = C_minus_2 @ rows.T
            D += cc
            np.add(D, self.yy[s : s + step], out=out[:, s : s + step], casting="same_kind")
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


def kmeans_plusplus_starts(
    X: np.ndarray,
    n_clusters: int,
    random_state: np.random.RandomState,
    n_starts: int,
    n_local_trials: int | None = None,
    mean: np.ndarray | None = None,
    n_threads: int = 1,
) -> list[np.ndarray]:
    """The centres of ``n_starts`` consecutive :func:`kmeans_plusplus` calls on one ``random_state``.

    The same starts, and the same advance of ``random_state``, as calling :func:`kmeans_plusplus`
    ``n_starts`` times (that is, as ``KMeans(n_init=n_starts)`` draws them), computed in lockstep:
    one distance GEMM per step for the candidates of all starts (in groups that keep the block
    under ``MAX_LOCKSTEP_BYTES``).

    ``mean``: seed on ``X - mean`` (computed in ``X``'s dtype, as ``KMeans.fit`` centres) without
    a centred copy of ``X``; the centres returned are rows of ``X - mean``.
    ``n_threads`` > 1: the starts are split into at least that many groups, seeded on that many
    threads with one BLAS thread each (the draws are made first, so the starts do not change).
    """
    global _FLOAT64_CUMSUM
    if _FLOAT64_CUMSUM is None:
        _FLOAT64_CUMSUM = _uses_float64_cumsum()
    n_samples = X.shape[0]
    dist = _Distances(X, mean)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    sample_weight = np.ones(n_samples, dtype=X.dtype)
    # Every draw a start makes, in scikit-learn's order: they do not depend on the data.
    first_ids, uniforms = [], []
    for _ in range(n_starts):
        first_ids.append(random_state.choice(n_samples, p=sample_weight / sample_weight.sum()))
        uniforms.append(random_state.uniform(size=(n_clusters - 1, n_local_trials)))
    per_group = max(1, MAX_LOCKSTEP_BYTES // max(1, n_local_trials * n_samples * 8))
    if n_threads > 1:
        per_group = min(per_group, -(-n_starts // n_threads))
    groups = [range(g, min(n_starts, g + per_group)) for g in range(0, n_starts, per_group)]

    def lockstep(members: range) -> np.ndarray:
        ids = np.full((len(members), n_clusters), -1, dtype=int)
        ids[:, 0] = [first_ids[s] for s in members]
        closest = list(dist(ids[:, 0]))
        pots = [row @ sample_weight for row in closest]
        for c in range(1, n_clusters):
            candidates = []
            for j, s in enumerate(members):
                rand_vals = uniforms[s][c - 1] * pots[j]
                weighted = sample_weight * closest[j]
                cumulative = np.cumsum(weighted, dtype=np.float64) if _FLOAT64_CUMSUM else np.cumsum(weighted)
                candidate_ids = np.searchsorted(cumulative, rand_vals)
                np.clip(candidate_ids, None, n_samples - 1, out=candidate_ids)
                candidates.append(candidate_ids)
            block = dist(np.concatenate(candidates))
            for j, candidate_ids in enumerate(candidates):
                distance_to_candidates = block[j * n_local_trials : (j + 1) * n_local_trials]
                np.minimum(closest[j], distance_to_candidates, out=distance_to_candidates)
                candidates_pot = distance_to_candidates @ sample_weight.reshape(-1, 1)
                best = np.argmin(candidates_pot)
                pots[j] = candidates_pot[best]
                closest[j] = distance_to_candidates[best].copy()
                ids[j, c] = candidate_ids[best]
        return ids

    if n_threads > 1 and len(groups) > 1:
        from embclust.blocks import map_on_threads

        seeded = map_on_threads(lockstep, groups, n_threads)
    else:
        seeded = [lockstep(members) for members in groups]
    return [dist.rows(row) for ids in seeded for row in ids]
