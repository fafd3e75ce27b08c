"""Per-cluster feature profiles: each cluster's feature distributions against the whole data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

NOISE = -1


def feature_profile_table(features: np.ndarray, names: list[str], labels: np.ndarray) -> pd.DataFrame:
    """Per cluster and feature: cluster mean, overall mean and standardised mean difference, ranked.

    The standardised mean difference is (cluster mean - overall mean) / overall standard
    deviation; ``rank`` orders each cluster's features by its absolute value (1 = differs most).
    Constant features get a difference of 0.
    """
    clusters, cluster_means, counts, overall_mean, overall_std = _moments(features, labels)
    scale = np.where(overall_std > 0, overall_std, np.inf)
    rows = []
    for i, c in enumerate(clusters):
        mean = cluster_means[i]
        smd = (mean - overall_mean) / scale
        order = np.argsort(-np.abs(smd), kind="stable")
        for rank, k in enumerate(order, start=1):
            rows.append(
                {"cluster": int(c), "rank": rank, "feature": names[k], "cluster_mean": float(mean[k]),
                 "overall_mean": float(overall_mean[k]), "smd": float(smd[k]), "cluster_size": int(counts[i])}
            )
    return pd.DataFrame(rows)


def _moments(features: np.ndarray, labels: np.ndarray, block_rows: int = 65_536):
    """Per-cluster means and the overall mean and standard deviation, in float64, block by block
    (two passes over the rows; no float64 copy of the whole matrix)."""
    from scipy.sparse import csr_matrix

    n, d = features.shape
    clusters = np.unique(labels[labels != NOISE])
    sums, total = np.zeros((clusters.size, d)), np.zeros(d)
    counts = np.zeros(clusters.size, dtype=np.int64)
    for start in range(0, n, block_rows):
        block = np.asarray(features[start : start + block_rows], dtype=np.float64)
        lab = labels[start : start + block_rows]
        keep = np.flatnonzero(lab != NOISE)
        index = np.searchsorted(clusters, lab[keep])
        sums += csr_matrix((np.ones(keep.size), (index, keep)), shape=(clusters.size, lab.size)) @ block
        counts += np.bincount(index, minlength=clusters.size)
        total += block.sum(axis=0)
    mean = total / n
    squares = np.zeros(d)
    for start in range(0, n, block_rows):
        diff = np.asarray(features[start : start + block_rows], dtype=np.float64) - mean
        squares += np.einsum("ij,ij->j", diff, diff)
    return clusters, sums / np.maximum(counts, 1)[:, None], counts, mean, np.sqrt(squares / n)


def top_features_table(profile: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """One row per cluster naming the ``top`` features that differ most, with their signed SMD."""
    rows = []
    for c, group in profile.groupby("cluster", sort=True):
        best = group.nsmallest(top, "rank")
        rows.append(
            {"cluster": int(c), "size": int(group["cluster_size"].iloc[0]),
             "differs_most": ", ".join(f"{f} ({s:+.2f})" for f, s in zip(best["feature"], best["smd"]))}
        )
    return pd.DataFrame(rows)


def distributions_figure(
    features: np.ndarray, names: list[str], labels: np.ndarray, profile: pd.DataFrame,
    max_features: int = 12, sample_size: int = 5000, seed: int = 0,
) -> go.Figure:
    """Small multiples: per feature, a box per cluster beside the whole data's box.

    Shows the ``max_features`` features with the largest absolute SMD in any cluster; boxes are
    drawn from a seeded sample of at most ``sample_size`` rows, so the page stays small.
    """
    strength = profile.assign(abs_smd=profile["smd"].abs()).groupby("feature")["abs_smd"].max()
    chosen = [f for f in strength.sort_values(ascending=False, kind="stable").index[:max_features]]
    rows = np.arange(labels.size)
    if labels.size > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(labels.size, sample_size, replace=False))
    sample, sample_labels = np.asarray(features[rows]), labels[rows]
    clusters = [int(c) for c in np.unique(labels[labels != NOISE])]
    cols = 3
    nrows = max(1, -(-len(chosen) // cols))
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=chosen, vertical_spacing=min(0.08, 0.5 / nrows))
    for i, name in enumerate(chosen):
        k = names.index(name)
        groups = [("all", sample[:, k])] + [(f"cluster {c}", sample[sample_labels == c, k]) for c in clusters]
        for group, values in groups:
            fig.add_trace(
                go.Box(y=values, name=group, showlegend=False, boxpoints=False,
                       marker_color="#888" if group == "all" else None),
                row=i // cols + 1, col=i % cols + 1,
            )
    title = "Feature distributions per cluster against all points"
    if rows.size < labels.size:
        title += f" (seeded sample of {rows.size} of {labels.size} points)"
    fig.update_layout(title=title, height=max(400, 300 * nrows))
    return fig
