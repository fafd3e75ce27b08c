"""Cluster diagnostics: silhouette diagram, profiles, composition vs labels, dendrogram, PCA.

Each function takes arrays and returns tables (pandas) and Plotly figures; none does O(n^2)
work on more points than its ``sample_size`` bound.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.stats import entropy
from sklearn.metrics import silhouette_samples
from sklearn.metrics.cluster import contingency_matrix

NOISE = -1


def seeded_sample(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded sample of ``size`` rows (all rows when ``size`` >= n)."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def cluster_centroids(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, centroids) of non-noise clusters, summed in float64 block by block (one
    pass over the rows: on threads here, where the rows lie with engine=ray) without copying X."""
    from scipy.sparse import csr_matrix

    from embclust import blocks

    ids = np.unique(labels[labels != NOISE])

    def block_sums(rows: slice, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab = labels[rows]
        keep = np.flatnonzero(lab != NOISE)
        members = np.searchsorted(ids, lab[keep])
        indicator = csr_matrix((np.ones(keep.size), (members, keep)), shape=(ids.size, lab.size))
        return indicator @ np.asarray(block, dtype=np.float64), np.bincount(members, minlength=ids.size)

    sums, counts = np.zeros((ids.size, X.shape[1])), np.zeros(ids.size)
    for group_sums, group_counts in blocks.map_groups(X, block_sums, _add_up, blocks.available_threads(), progress="centroids"):
        sums += group_sums
        counts += group_counts
    return ids, sums / np.maximum(counts, 1)[:, None]


def _add_up(parts) -> tuple:
    """The element-wise sum of a group's block results (tuples of arrays), in block order."""
    total = None
    for part in parts:
        total = [np.array(p, dtype=np.float64) for p in part] if total is None else [t + p for t, p in zip(total, part)]
    return tuple(total)


# --------------------------------------------------------------------------- silhouette


def silhouette_by_sample(
    X: np.ndarray, labels: np.ndarray, sample_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample silhouette on a seeded sample of non-noise points: (sample rows, values)."""
    clustered = np.flatnonzero(labels != NOISE)
    rows = clustered[seeded_sample(clustered.size, sample_size, seed)]
    if not 2 <= np.unique(labels[rows]).size < rows.size:  # silhouette needs 2 .. n - 1 clusters
        return rows, np.full(rows.size, np.nan)
    return rows, silhouette_samples(X[rows], labels[rows])


def silhouette_table(labels: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Mean silhouette per cluster (over the sampled points)."""
    df = pd.DataFrame({"cluster": labels, "silhouette": values})
    out = df.groupby("cluster")["silhouette"].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": "mean_silhouette", "count": "n_sampled"})


def silhouette_figure(labels: np.ndarray, values: np.ndarray, title: str) -> go.Figure:
    """Classic silhouette diagram: values sorted within each cluster, with the mean line."""
    fig = go.Figure()
    y0 = 0
    gap = max(1, len(values) // 100)
    for c in np.unique(labels):
        v = np.sort(values[labels == c])
        y = np.arange(y0, y0 + v.size)
        fig.add_trace(
            go.Scatter(
                x=v, y=y, mode="lines", fill="tozerox", name=f"cluster {c}", line=dict(width=0.5),
                hovertemplate=f"cluster {c}<br>silhouette %{{x:.3f}}<extra></extra>",
            )
        )
        y0 += v.size + gap
    mean = float(np.nanmean(values)) if values.size else float("nan")
    fig.add_vline(x=mean, line_dash="dash", line_color="red", annotation_text=f"mean {mean:.3f}")
    fig.update_layout(title=title, xaxis_title="silhouette", yaxis=dict(showticklabels=False), height=600)
    return fig


# --------------------------------------------------------------------------- profile


def _describe_member(i: int, ids: np.ndarray, texts: np.ndarray | None, width: int = 80) -> str:
    if texts is None:
        return str(ids[i])
    text = str(texts[i])
    return f"{ids[i]}: {text[:width]}{'...' if len(text) > width else ''}"


def _distance_to_centroid(X: np.ndarray, labels: np.ndarray, cluster_ids: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's Euclidean distance to its own cluster's centroid (NaN for noise), one pass over
    the rows' blocks (where they lie, with engine=ray)."""
    from embclust import blocks

    def distances(rows: slice, block: np.ndarray) -> np.ndarray:
        lab = labels[rows]
        out = np.full(lab.size, np.nan)
        keep = np.flatnonzero(lab != NOISE)
        if keep.size:
            rows_kept = np.asarray(block[keep], dtype=np.float64)
            out[keep] = np.linalg.norm(rows_kept - centroids[np.searchsorted(cluster_ids, lab[keep])], axis=1)
        return out

    groups = blocks.map_groups(X, distances, lambda parts: np.concatenate(list(parts)), blocks.available_threads(),
                               progress="profile: distances to centroids")
    return np.concatenate(groups) if groups else np.full(X.shape[0], np.nan)


def profile_table(
    X: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    texts: np.ndarray | None = None,
    mean_silhouette: dict | None = None,
    keywords: dict | None = None,
    n_nearest: int = 10,
    centroids_by_cluster: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Per cluster: size, mean silhouette, distance to the nearest other centroid, and the
    ``n_nearest`` members closest to the centroid (ids, with text when known).

    ``centroids_by_cluster``: :func:`cluster_centroids` of the same rows and labels, where the
    caller has it already (it is a pass over every row)."""
    cluster_ids, centroids = centroids_by_cluster if centroids_by_cluster is not None else cluster_centroids(X, labels)
    rows = []
    if cluster_ids.size > 1:
        sq = (centroids**2).sum(1)
        between = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * centroids @ centroids.T, 0))
        np.fill_diagonal(between, np.inf)
        nearest = between.min(1)
    else:
        nearest = np.full(cluster_ids.size, np.nan)
    distance = _distance_to_centroid(X, labels, cluster_ids, centroids)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], cluster_ids, side="left"), np.searchsorted(labels[order], cluster_ids, side="right")
    for i, c in enumerate(cluster_ids):
        members = order[bounds[0][i] : bounds[1][i]]  # in row order (a stable sort)
        d = distance[members]
        closest = members[np.argsort(d, kind="stable")[:n_nearest]]
        row = {
            "cluster": int(c),
            "size": int(members.size),
            "mean_silhouette": (mean_silhouette or {}).get(c, np.nan),
            "nearest_centroid_distance": float(nearest[i]),
            "mean_distance_to_centroid": float(d.mean()),
        }
        if keywords is not None:
            row["keywords"] = ", ".join(keywords.get(c, []))
        row["nearest_members"] = " | ".join(_describe_member(j, ids, texts) for j in closest)
        rows.append(row)
    n_noise = int((labels == NOISE).sum())
    if n_noise:
        rows.append({"cluster": NOISE, "size": n_noise, "nearest_members": "(noise)"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- composition


def _codes(true_labels, codes):
    if codes is not None:
        return codes
    return np.unique(np.asarray(true_labels).astype(str), return_inverse=True)


def composition_table(
    labels: np.ndarray,
    true_labels: np.ndarray | None = None,
    top: int = 5,
    codes: tuple | None = None,
    known: np.ndarray | None = None,
) -> tuple[pd.DataFrame, float]:
    """Per cluster: size, purity, entropy (bits) of its true labels and the top labels with
    their share; returns the table and the overall purity. ``codes``: (class names, each row's
    class index) instead of ``true_labels`` (see :meth:`Dataset.label_codes`).

    ``known``: which rows have a known true label (see ``metrics.known_labels``). Purity, entropy
    and the top labels count those rows only, as the agreement scores do, so the overall purity
    equals the run's ``purity``; column ``unknown_share`` says how much of each cluster had no
    label (0 where every label is known), and a cluster with none known has NaN purity.
    """
    classes, class_idx = _codes(true_labels, codes)
    labels = np.asarray(labels)
    clusters, cluster_idx, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    class_idx, cluster_idx = np.asarray(class_idx).ravel(), cluster_idx.ravel()
    if known is not None:
        known = np.asarray(known, dtype=bool)
        class_idx, cluster_idx = class_idx[known], cluster_idx[known]
    # classes x clusters counts of the rows with a known label
    table = np.bincount(class_idx * clusters.size + cluster_idx, minlength=len(classes) * clusters.size)
    table = table.reshape(len(classes), clusters.size)
    rows = []
    for j, c in enumerate(clusters):
        counts = table[:, j]
        n_known = counts.sum()
        shares = counts / n_known if n_known else np.zeros(counts.size)
        order = np.argsort(-counts, kind="stable")[:top]
        row = {
            "cluster": int(c),
            "size": int(sizes[j]),
            "purity": float(shares.max()) if n_known else float("nan"),
            "entropy_bits": float(entropy(shares[shares > 0], base=2)) if n_known else float("nan"),
        }
        if known is not None:
            row["unknown_share"] = float(1.0 - n_known / sizes[j])
        for rank, k in enumerate(order, start=1):
            if counts[k] == 0:
                break
            row[f"label_{rank}"] = classes[k]
            row[f"share_{rank}"] = float(shares[k])
        rows.append(row)
    total = table.sum()
    overall = float(table.max(axis=0).sum() / total) if total else float("nan")
    return pd.DataFrame(rows), overall


def contingency_figure(
    labels: np.ndarray, true_labels: np.ndarray | None = None, max_labels: int = 40, codes: tuple | None = None
) -> go.Figure:
    """Heatmap of cluster x true-label counts (the ``max_labels`` most common labels)."""
    classes, class_idx = _codes(true_labels, codes)
    clusters = np.unique(labels)
    table = contingency_matrix(class_idx, labels)
    keep = np.argsort(-table.sum(1), kind="stable")[:max_labels]
    z = table[keep].T
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[html.escape(c) for c in classes[keep]],
            y=[("noise" if c == NOISE else f"cluster {c}") for c in clusters],
            colorscale="Blues",
            hovertemplate="%{y} / label %{x}: %{z} points<extra></extra>",
        )
    )
    fig.update_layout(
        title="Clusters vs true labels (counts)",
        xaxis_title="true label",
        height=max(400, 22 * len(clusters) + 150),
    )
    return fig


# --------------------------------------------------------------------------- dendrogram


def dendrogram_figure(
    X: np.ndarray, method: str = "ward", sample_size: int = 2000, truncate_p: int = 30, seed: int = 0
) -> go.Figure:
    """Dendrogram of a seeded sample, truncated to the last ``truncate_p`` merges."""
    from scipy.cluster.hierarchy import dendrogram, linkage

    rows = seeded_sample(X.shape[0], sample_size, seed)
    Z = linkage(np.asarray(X[rows], dtype=np.float64), method=method)
    d = dendrogram(Z, truncate_mode="lastp", p=truncate_p, no_plot=True)
    fig = go.Figure()
    for xs, ys in zip(d["icoord"], d["dcoord"]):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#1f77b4", width=1), hoverinfo="skip"))
    fig.update_layout(
        title=f"Dendrogram ({method} linkage, seeded sample of {rows.size} points, last {truncate_p} merges)",
        xaxis=dict(tickvals=[5 + 10 * i for i in range(len(d["ivl"]))], ticktext=d["ivl"], title="leaf (size)"),
        yaxis_title="merge distance",
        showlegend=False,
        height=500,
    )
    return fig


# --------------------------------------------------------------------------- PCA


def pca_pareto_figure(explained_variance_ratio: np.ndarray) -> go.Figure:
    """Explained variance per component (bars) and cumulative (line)."""
    k = np.arange(1, explained_variance_ratio.size + 1)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=k, y=explained_variance_ratio, name="per component"))
    fig.add_trace(go.Scatter(x=k, y=np.cumsum(explained_variance_ratio), name="cumulative", yaxis="y2"))
    fig.update_layout(
        title="PCA explained variance",
        xaxis_title="component",
        yaxis=dict(title="explained variance ratio"),
        yaxis2=dict(title="cumulative", overlaying="y", side="right", range=[0, 1.02]),
        height=450,
    )
    return fig
