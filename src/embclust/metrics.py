"""Scores of a clustering: internal quality and, when true labels exist, agreement with them."""

from __future__ import annotations

import logging

import numpy as np
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix

log = logging.getLogger(__name__)

NOISE = -1


def purity_score(true_labels: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose cluster's most common true label is their own."""
    table = contingency_matrix(true_labels, labels, sparse=True)
    return float(table.max(axis=0).sum() / table.sum())


def score_clustering(
    X: np.ndarray,
    labels: np.ndarray,
    true_labels: np.ndarray | None = None,
    silhouette_sample_size: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Return the metrics logged for one run.

    Silhouette, Calinski-Harabasz and Davies-Bouldin are computed on ``X`` (the space that was
    clustered) over non-noise points; silhouette on a seeded sample of ``silhouette_sample_size``
    points when that is smaller than the data. Agreement scores (ARI, NMI, V-measure, purity) use
    every point, noise counting as one more cluster.
    """
    scores: dict[str, float] = {}
    clustered = labels != NOISE
    cluster_ids, sizes = np.unique(labels[clustered], return_counts=True)
    scores["n_clusters"] = float(cluster_ids.size)
    scores["noise_fraction"] = float(1.0 - clustered.mean())
    if sizes.size:
        scores["cluster_size_min"] = float(sizes.min())
        scores["cluster_size_max"] = float(sizes.max())

    Xc, lc = (X, labels) if clustered.all() else (X[clustered], labels[clustered])
    n = lc.size
    if 2 <= cluster_ids.size < n:
        sample = n if silhouette_sample_size is None else min(int(silhouette_sample_size), n)
        scores["silhouette"] = float(
            skm.silhouette_score(Xc, lc, sample_size=None if sample == n else sample, random_state=seed)
        )
        scores["silhouette_sample_size"] = float(sample)
        scores["calinski_harabasz"] = float(skm.calinski_harabasz_score(Xc, lc))
        scores["davies_bouldin"] = float(skm.davies_bouldin_score(Xc, lc))
    else:
        log.warning(
            "%d cluster(s) among %d clustered points: silhouette, CH and DB need 2..n-1 clusters; not scored",
            cluster_ids.size,
            n,
        )

    if true_labels is not None:
        scores["ari"] = float(skm.adjusted_rand_score(true_labels, labels))
        scores["nmi"] = float(skm.normalized_mutual_info_score(true_labels, labels))
        scores["v_measure"] = float(skm.v_measure_score(true_labels, labels))
        scores["purity"] = purity_score(true_labels, labels)
    return scores
