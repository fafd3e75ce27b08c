"""Cluster-routed retrieval: route a query to its nearest cluster centroids, rank only their members.

This is the inverted-file (IVF) idea: a clustering is fit to route retrieval when the nearest
``probe`` clusters of a query hold most of its true nearest neighbours. Similarity is cosine on
L2-normalised vectors. Noise points (label -1) are attached to their nearest centroid for routing,
as an IVF index files every vector under some list, so every document stays reachable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embclust.errors import DataError

log = logging.getLogger(__name__)

NOISE = -1
# Corpus rows per block in brute-force search: bounds the (queries x block) score matrix.
BLOCK_ROWS = 65_536


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32, a block of rows at a time
    into memory or, above ``memory.spill_above_mb``, a temporary file."""
    from embclust import blocks

    X = X if X.dtype == np.float32 else np.asarray(X, dtype=np.float32)
    norms = np.concatenate([np.linalg.norm(np.asarray(X[b]), axis=1) for b in blocks.row_blocks(X.shape[0], BLOCK_ROWS)]) \
        if X.shape[0] else np.zeros(0, dtype=np.float32)
    if np.allclose(norms, 1.0, atol=1e-4):
        # Sentence-transformer embeddings usually come normalised: no second corpus-sized copy.
        return X
    out = blocks.scratch_matrix(X.shape[0], X.shape[1], np.float32, "normalised corpus")
    for b in blocks.row_blocks(X.shape[0], BLOCK_ROWS):
        n = norms[b][:, None]
        out[b] = np.asarray(X[b]) / np.where(n > 0, n, 1.0)
    return out


def cluster_centroids(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each cluster's rows (noise excluded): (sorted cluster ids, centroids), summed block by block."""
    from embclust.explain.tables import cluster_centroids as centroids_by_blocks

    if not (labels != NOISE).any():
        raise DataError("the run called every point noise, so it has no cluster to assign to or search in: use a run "
                        "that found clusters (for HDBSCAN, a smaller clusterer.min_cluster_size or min_samples)")
    clusters, centroids = centroids_by_blocks(X, labels)
    return clusters, centroids.astype(np.float32)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` corpus rows by inner product for each query, scanning the corpus in blocks.

    ``exclude[i]`` (a corpus row, or -1) is left out of query ``i``'s results: a query drawn from
    the corpus must not find itself. Returns (rows, scores), best first.
    """
    n_q = queries.shape[0]
    k = min(k, corpus.shape[0] - (0 if exclude is None else 1))
    best_rows = np.full((n_q, 0), -1, dtype=np.int64)
    best_scores = np.full((n_q, 0), -np.inf, dtype=np.float32)
    for start in range(0, corpus.shape[0], BLOCK_ROWS):
        block = np.asarray(corpus[start : start + BLOCK_ROWS], dtype=np.float32)
        scores = queries @ block.T
        if exclude is not None:
            inside = (exclude >= start) & (exclude < start + block.shape[0])
            scores[np.flatnonzero(inside), exclude[inside] - start] = -np.inf
        rows = np.broadcast_to(np.arange(start, start + block.shape[0]), scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, axis=1)
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(rows, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


@dataclass
class RoutingIndex:
    """Normalised corpus, cluster centroids and the routing list (cluster) of every document."""

    corpus: np.ndarray
    clusters: np.ndarray
    centroids: np.ndarray
    lists: np.ndarray  # index into ``clusters`` of each document's routing list

    @classmethod
    def build(cls, X: np.ndarray, labels: np.ndarray) -> "RoutingIndex":
        corpus = normalize_rows(X)
        clusters, centroids = cluster_centroids(corpus, labels)
        centroids = normalize_rows(centroids)
        lists = np.searchsorted(clusters, labels)
        noise = np.flatnonzero(labels == NOISE)
        if noise.size:
            lists[noise] = top_k(corpus[noise], centroids, 1)[0][:, 0]
        return cls(corpus, clusters, centroids, lists)

    def route(self, queries: np.ndarray, probe: int) -> np.ndarray:
        """Indices (into ``clusters``) of each query's ``probe`` nearest centroids, nearest first."""
        return top_k(normalize_rows(queries), self.centroids, min(probe, self.clusters.size))[0]

    def search(self, query: np.ndarray, top: int, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """Top documents of one query among the members of its ``probe`` nearest clusters: (rows, scores)."""
        probed = self.route(query[None, :], probe)[0]
        candidates = np.flatnonzero(np.isin(self.lists, probed))
        rows, scores = top_k(normalize_rows(query[None, :]), self.corpus[candidates], top)
        return candidates[rows[0]], scores[0]


def routing_recall(
    X: np.ndarray, labels: np.ndarray, probes: tuple[int, ...] = (1, 3), k: int = 10, n_queries: int = 200, seed: int = 0
) -> dict[str, float]:
    """Share of brute-force top-``k`` neighbours that cluster routing finds, per probe count.

    Queries are a seeded sample of ``n_queries`` documents of the corpus itself (each excluded
    from its own results). Returns ``routing_recall_at_<k>_probe<p>`` and
    ``routing_scanned_fraction_probe<p>`` (mean share of the corpus the probed clusters hold).
    """
    index = RoutingIndex.build(X, labels)
    n = index.corpus.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    truth, _ = top_k(index.corpus[rows], index.corpus, k, exclude=rows)
    list_sizes = np.bincount(index.lists, minlength=index.clusters.size)
    out: dict[str, float] = {}
    for p in probes:
        probed = index.route(index.corpus[rows], p)
        # The routed top-k holds exactly those true neighbours that lie in a probed list: the
        # candidates are a subset of the corpus, so a global top-k item stays in their top-k.
        found = (index.lists[truth][:, :, None] == probed[:, None, :]).any(axis=2)
        out[f"routing_recall_at_{k}_probe{p}"] = float(found.mean())
        out[f"routing_scanned_fraction_probe{p}"] = float(list_sizes[probed].sum(axis=1).mean() / n)
    log.info("routing recall@%d on %d queries: %s", k, rows.size, ", ".join(f"{m}={v:.3f}" for m, v in out.items()))
    return out
