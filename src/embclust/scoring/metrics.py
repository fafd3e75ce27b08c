"""Scores of a clustering: internal quality and, when true labels exist, agreement with them.

Calinski-Harabasz and Davies-Bouldin are computed here in row chunks rather than with
scikit-learn's functions: those copy the data to float64 (Calinski-Harabasz) or copy every
cluster (Davies-Bouldin), which at a million embeddings is several times the data. The chunked
versions give scikit-learn's values (float64 accumulation, exact two-pass formulas) and never
hold more than one chunk of float64 rows.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix
from sklearn.utils import check_random_state

from embclust.data.dataset import MISSING_LABEL
from embclust.scoring import silhouette

log = logging.getLogger(__name__)

NOISE = -1
# Rows per chunk: at most CHUNK_ROWS, and float64 chunks of about CHUNK_BYTES.
CHUNK_ROWS = 65_536
CHUNK_BYTES = 16 * 2**20


def purity_score(true_labels: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose cluster's most common true label is their own."""
    table = contingency_matrix(true_labels, labels, sparse=True)
    return float(table.max(axis=0).sum() / table.sum())


def _chunk_rows(n_features: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return max(1, int(chunk_size))
    # Keep a float64 chunk near 16 MB whatever the width: a pass holds the chunk and its rows'
    # centroids, so 32 MB, which is also as fast as larger chunks.
    return max(1024, min(CHUNK_ROWS, CHUNK_BYTES // (8 * max(1, n_features))))


class ClusterStats:
    """Per-cluster counts, float64 centroids and within-cluster distances, from two passes over
    row blocks (:func:`embclust.blocks.map_groups`: on threads here, or on Ray workers).

    ``labels`` may hold ``NOISE`` (-1) when ``ignore_noise`` is true: those rows are skipped
    without copying ``X``. ``X`` may be float32 or a memory map; it is read one block at a time
    (:data:`embclust.blocks.BLOCK_ROWS` rows, the blocks of KMeans's passes), and converted to
    float64 a chunk of about 16 MB at a time. ``passes``: the same rows on Ray workers
    (engine=ray), where ``block_labels(X_block)`` gives a block's labels again (KMeans: the
    nearest of its centres, on the same blocks as the pass that assigned them) instead of
    shipping every row's label; the block results are those of a local pass, so the scores are
    the same bits.
    """

    def __init__(self, X: np.ndarray, labels: np.ndarray, ignore_noise: bool = False, chunk_size: int | None = None,
                 passes=None, block_labels=None):
        from embclust import blocks

        labels = np.asarray(labels)
        if X.ndim != 2 or X.shape[0] != labels.shape[0]:
            raise ValueError(f"X of shape {X.shape} and {labels.shape[0]} labels do not match")
        keep = labels != NOISE if ignore_noise else np.ones(labels.shape[0], dtype=bool)
        self.cluster_ids, codes = np.unique(labels[keep], return_inverse=True)
        k, d = self.cluster_ids.size, X.shape[1]
        self.n_clusters = k
        self.counts = np.bincount(codes.ravel(), minlength=k).astype(np.int64)
        self.n_samples = int(self.counts.sum())
        chunk = _chunk_rows(d, chunk_size)
        block_rows = blocks.BLOCK_ROWS if chunk_size is None else chunk
        if passes is None:
            all_codes = np.full(labels.shape[0], -1, dtype=np.int64)  # -1 for skipped rows
            all_codes[keep] = codes.ravel()
            codes_of = _codes_from_rows(all_codes)
            rows = X
        else:
            codes_of = _codes_from_labels(block_labels, self.cluster_ids, ignore_noise)
            rows = passes
        n_threads = blocks.available_threads()

        # Pass 1: per-cluster sums -> centroids; overall sum -> mean.
        def sums_of(rows_slice: slice, X_block: np.ndarray):
            codes = codes_of(rows_slice, X_block)
            partial = np.zeros((k, d), dtype=np.float64)
            for block, c in _scored_chunks(X_block, codes, chunk):
                _add_by_cluster(partial, block, c)
            return partial, np.bincount(codes[codes >= 0], minlength=k)

        folds = blocks.map_groups(rows, sums_of, _add_parts, n_threads, block_rows, progress="score: CH / DB pass 1 of 2, rows")
        sums, counts = _add_parts(folds)
        if not np.array_equal(counts, self.counts):  # the labels given again on the workers are not these labels
            raise RuntimeError("CH / DB: the labels of the passes over the rows differ from the run's labels")
        self.centroids = sums / np.maximum(self.counts, 1)[:, None]
        self.mean = sums.sum(axis=0) / max(self.n_samples, 1)

        # Pass 2: squared and plain distances of each point to its own centroid.
        centroids = self.centroids

        def distances_of(rows_slice: slice, X_block: np.ndarray):
            sq_total, total = np.zeros(k), np.zeros(k)
            for block, c in _scored_chunks(X_block, codes_of(rows_slice, X_block), chunk):
                block -= centroids[c]
                sq = np.einsum("ij,ij->i", block, block)
                sq_total += np.bincount(c, weights=sq, minlength=k)
                total += np.bincount(c, weights=np.sqrt(sq), minlength=k)
            return sq_total, total

        folds = blocks.map_groups(rows, distances_of, _add_parts, n_threads, block_rows, progress="score: CH / DB pass 2 of 2, rows")
        self.sq_dist, self.dist = _add_parts(folds)

    def calinski_harabasz(self) -> float:
        """scikit-learn's ``calinski_harabasz_score`` from the accumulated statistics."""
        k, n = self.n_clusters, self.n_samples
        _check_number_of_labels(k, n)
        extra = float(np.sum(self.counts * np.sum((self.centroids - self.mean) ** 2, axis=1)))
        intra = float(self.sq_dist.sum())
        return 1.0 if intra == 0.0 else extra * (n - k) / (intra * (k - 1.0))

    def davies_bouldin(self) -> float:
        """scikit-learn's ``davies_bouldin_score`` from the accumulated statistics."""
        _check_number_of_labels(self.n_clusters, self.n_samples)
        intra = self.dist / self.counts
        centroid_distances = skm.pairwise_distances(self.centroids)
        if np.allclose(intra, 0) or np.allclose(centroid_distances, 0):
            return 0.0
        centroid_distances[centroid_distances == 0] = np.inf
        combined = intra[:, None] + intra
        return float(np.mean(np.max(combined / centroid_distances, axis=1)))


def _add_parts(parts) -> tuple:
    """Element-wise sums of the tuples of arrays in ``parts``, added in order as they come (float64)."""
    totals = None
    for part in parts:
        if totals is None:
            totals = [np.zeros(np.shape(x), dtype=np.float64) for x in part]
        for total, x in zip(totals, part):
            total += x
    return tuple(totals)


def _scored_chunks(X_block: np.ndarray, codes: np.ndarray, chunk: int):
    """The block's scored rows as float64, ``chunk`` rows at a time, with their cluster codes."""
    for start in range(0, codes.size, chunk):
        c = codes[start : start + chunk]
        block = np.asarray(X_block[start : start + chunk])
        sel = c >= 0
        if not sel.all():
            block, c = block[sel], c[sel]
        if c.size:
            yield block.astype(np.float64), c


def _codes_from_rows(all_codes: np.ndarray):
    return lambda rows, X_block: all_codes[rows]


def _codes_from_labels(block_labels, cluster_ids: np.ndarray, ignore_noise: bool):
    """Codes of a block's labels as ``block_labels`` gives them where the block is read (-1: not scored)."""
    k = cluster_ids.size

    def codes_of(rows, X_block):
        labels = np.asarray(block_labels(X_block))
        codes = np.minimum(np.searchsorted(cluster_ids, labels), k - 1)
        known = cluster_ids[codes] == labels
        if ignore_noise:
            known &= labels != NOISE
        return np.where(known, codes, -1)

    return codes_of


def _add_by_cluster(sums: np.ndarray, block: np.ndarray, codes: np.ndarray) -> None:
    """``sums[c] += rows of cluster c`` for a chunk, as one sparse-indicator product."""
    from scipy import sparse

    k = sums.shape[0]
    indicator = sparse.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(k, codes.size)
    )
    sums += indicator @ block


def _check_number_of_labels(n_labels: int, n_samples: int) -> None:
    if not 1 < n_labels < n_samples:
        raise ValueError(
            f"Number of labels is {n_labels}. Valid values are 2 to n_samples - 1 (inclusive)"
        )


def calinski_harabasz(X: np.ndarray, labels: np.ndarray, chunk_size: int | None = None) -> float:
    """Calinski-Harabasz index, equal to scikit-learn's, in bounded memory."""
    return ClusterStats(X, labels, chunk_size=chunk_size).calinski_harabasz()


def davies_bouldin(X: np.ndarray, labels: np.ndarray, chunk_size: int | None = None) -> float:
    """Davies-Bouldin index, equal to scikit-learn's, in bounded memory."""
    return ClusterStats(X, labels, chunk_size=chunk_size).davies_bouldin()


def silhouette_values(
    X: np.ndarray, labels: np.ndarray, rows: np.ndarray, sample_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point silhouette over ``rows`` of ``X`` (all of them, or a seeded sample of ``sample_size``).

    Returns ``(scored rows, values)``. The sample is drawn exactly as ``silhouette_score(X[rows],
    labels[rows], sample_size=..., random_state=seed)`` draws it, so the mean of the values is
    that score, but only the sampled rows are copied. The values come from the blocked kernel in
    :mod:`embclust.scoring.silhouette`, equal to scikit-learn's per sample within 1e-6.
    """
    if sample_size is not None and sample_size < rows.size:
        rows = rows[check_random_state(seed).permutation(rows.size)[:sample_size]]
    if rows.size == X.shape[0]:  # every row, in order: no copy
        return rows, silhouette.silhouette_samples(X, labels)
    return rows, silhouette.silhouette_samples(np.asarray(X[rows]), labels[rows])


def size_scores(labels: np.ndarray) -> dict[str, float]:
    """Number of clusters, noise fraction and smallest/largest cluster size (noise is -1)."""
    clustered = labels != NOISE
    cluster_ids, sizes = np.unique(labels[clustered], return_counts=True)
    scores = {"n_clusters": float(cluster_ids.size), "noise_fraction": float(1.0 - clustered.mean())}
    if sizes.size:
        scores["cluster_size_min"] = float(sizes.min())
        scores["cluster_size_max"] = float(sizes.max())
    return scores


def sample_rows_for(n_samples: int, sample_size: int | None, seed: int) -> np.ndarray:
    """Rows a silhouette is scored on: a seeded permutation's first ``sample_size``, or all in order."""
    if sample_size is None or sample_size >= n_samples:
        return np.arange(n_samples)
    return check_random_state(seed).permutation(n_samples)[: int(sample_size)]


def score_clustering(
    X: np.ndarray,
    labels: np.ndarray,
    true_labels: np.ndarray | None = None,
    silhouette_sample_size: int | None = None,
    seed: int = 0,
    return_silhouette_values: bool = False,
    sample_rows: np.ndarray | None = None,
    passes=None,
    block_labels=None,
):
    """Return the metrics logged for one run.

    Silhouette, Calinski-Harabasz and Davies-Bouldin are computed on ``X`` (the space that was
    clustered) over non-noise points. Silhouette is scored on ``sample_rows`` (the sweep's shared
    sample; default: a seeded sample of ``silhouette_sample_size`` rows, or all rows), leaving out
    the noise among them. Calinski-Harabasz and Davies-Bouldin are exact and streamed over row
    chunks. Agreement scores (ARI, NMI, V-measure, purity) use every point, noise counting as one
    more cluster.

    With ``return_silhouette_values``, return ``(scores, (rows, values))``: the per-point
    silhouette of the scored rows (None when not scored), which the silhouette diagram reuses.
    ``passes`` / ``block_labels``: CH and DB's passes run on those rows (engine=ray), see
    :class:`ClusterStats`.
    """
    labels = np.asarray(labels)
    scores = size_scores(labels)
    per_point = None
    clustered = labels != NOISE
    n = int(clustered.sum())
    if sample_rows is None:
        sample_rows = sample_rows_for(labels.size, silhouette_sample_size, seed)
    rows = sample_rows[clustered[sample_rows]]
    if 2 <= scores["n_clusters"] < n:
        if silhouette_sample_scorable(labels[rows]):  # else CH and DB below still use every clustered row
            per_point = silhouette_values(X, labels, rows, None, seed)
            scores["silhouette"] = float(np.mean(per_point[1]))
            scores["silhouette_sample_size"] = float(rows.size)
        stats = ClusterStats(X, labels, ignore_noise=True, passes=passes, block_labels=block_labels)
        scores["calinski_harabasz"] = stats.calinski_harabasz()
        scores["davies_bouldin"] = stats.davies_bouldin()
    else:
        log.warning(
            "%d cluster(s) among %d clustered points: silhouette, CH and DB need 2..n-1 clusters; not scored",
            int(scores["n_clusters"]),
            n,
        )

    if true_labels is not None:
        scores.update(agreement_scores(true_labels, labels))
    return (scores, per_point) if return_silhouette_values else scores


def silhouette_sample_scorable(sampled_labels: np.ndarray) -> bool:
    """Whether the silhouette sample's clustered labels hold 2..n-1 clusters; one warning line if not."""
    in_sample = np.unique(sampled_labels).size
    if 2 <= in_sample < sampled_labels.size:
        return True
    log.warning("the silhouette sample holds %d cluster(s) among its %d clustered points: silhouette needs "
                "2..n-1 there; not scored (raise metrics.silhouette_sample_size)", in_sample, sampled_labels.size)
    return False


def known_labels(true_labels: np.ndarray) -> np.ndarray:
    """Which rows have a known true label: a negative integer label means unknown, as does an
    empty cell of a text label column (``(missing)``)."""
    true_labels = np.asarray(true_labels)
    if np.issubdtype(true_labels.dtype, np.integer):
        return true_labels >= 0
    return true_labels != MISSING_LABEL


def agreement_scores(true_labels: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ARI, NMI, V-measure and purity against true labels (noise counts as one more cluster).

    Negative integer true labels mean unknown, as does an empty cell of a text label column
    (``(missing)``): those rows are left out.
    """
    true_labels, labels = np.asarray(true_labels), np.asarray(labels)
    numeric = np.issubdtype(true_labels.dtype, np.integer)
    known = known_labels(true_labels)
    if not known.all():
        log.info("agreement scores on the %d of %d rows with a known label", int(known.sum()), known.size)
        true_labels, labels = true_labels[known], labels[known]
    if true_labels.size == 0:
        log.warning("every true label is unknown (negative or missing): ARI, NMI, V-measure and purity not scored")
        return {}
    if not numeric:
        # Integer codes in sorted class order, as scikit-learn numbers classes: the sums of NMI and
        # V-measure then run in its order and give its bits.
        true_labels = pd.factorize(true_labels, sort=True)[0]
    return _agreement_from_contingency(contingency_matrix(true_labels, labels, sparse=True, dtype=np.int64))


def _agreement_from_contingency(table) -> dict[str, float]:
    """ARI, NMI (arithmetic mean), V-measure and purity from one contingency table, by
    scikit-learn's formulas (``adjusted_rand_score``, ``normalized_mutual_info_score``,
    ``v_measure_score``): each of those builds the table again (two sorts of every row's
    labels, 0.9 s of a 25-cell sweep of 42,000 rows)."""
    n = np.int64(table.sum())
    n_true, n_pred = np.ravel(table.sum(axis=1)), np.ravel(table.sum(axis=0))
    # ARI from the pair confusion matrix, as adjusted_rand_score
    sum_squares = (table.data.astype(np.int64) ** 2).sum()
    tp = int(sum_squares - n)
    fp = int(table.dot(n_pred).sum() - sum_squares)
    fn = int(table.transpose().dot(n_true).sum() - sum_squares)
    tn = int(n**2 - fp - fn - sum_squares)
    ari = 1.0 if fn == 0 and fp == 0 else 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    mi = skm.mutual_info_score(None, None, contingency=table)
    h_true, h_pred = _entropy_of_counts(n_true), _entropy_of_counts(n_pred)
    if n_true.size == n_pred.size == 1 or n_true.size == n_pred.size == 0:
        nmi = 1.0
    else:
        nmi = 0.0 if mi == 0 else float(mi / np.mean([h_true, h_pred]))
    homogeneity = mi / h_true if h_true else 1.0
    completeness = mi / h_pred if h_pred else 1.0
    v_measure = 0.0 if homogeneity + completeness == 0.0 else 2 * homogeneity * completeness / (homogeneity + completeness)
    return {"ari": float(ari), "nmi": float(nmi), "v_measure": float(v_measure),
            "purity": float(table.max(axis=0).sum() / n)}


def _entropy_of_counts(counts: np.ndarray) -> float:
    """scikit-learn's ``_entropy`` of a labelling, from its class counts."""
    import math

    pi = counts.astype(np.float64)
    pi = pi[pi > 0]
    if pi.size <= 1:
        return 1.0 if pi.size == 0 else 0.0
    pi_sum = np.sum(pi)
    return float(-np.sum((pi / pi_sum) * (np.log(pi) - math.log(pi_sum))))
