"""Interactive Plotly figures of a clustering, written as self-contained HTML."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# WebGL scatter keeps maps of 100k+ points responsive in the browser.
_MARKER = dict(size=4, opacity=0.7)


def _category_traces(x, y, groups, hover, legend: str, prefix: str):
    """One Scattergl trace per group, so each group can be toggled in the legend."""
    order = sorted(np.unique(groups), key=lambda g: (len(g), g))
    for g in order:
        mask = groups == g
        yield go.Scattergl(
            x=x[mask],
            y=y[mask],
            mode="markers",
            marker=_MARKER,
            name=f"{prefix}{g}",
            text=hover[mask],
            hovertemplate="%{text}<extra></extra>",
            legend=legend,
        )


def cluster_map_figure(
    coords: np.ndarray,
    clusters: np.ndarray,
    ids: np.ndarray,
    true_labels: np.ndarray | None = None,
    title: str = "",
) -> go.Figure:
    """Scatter of the 2-D map coloured by cluster, beside one coloured by true label when known."""
    x, y = coords[:, 0], coords[:, 1]
    cluster_str = np.where(clusters < 0, "noise", clusters.astype(str))
    # Hover text comes from user data: escape it so ids or labels cannot inject HTML.
    hover = np.array([f"id: {html.escape(str(i))}<br>cluster: {c}" for i, c in zip(ids, cluster_str)], dtype=object)
    if true_labels is not None:
        hover = np.array(
            [f"{h}<br>label: {html.escape(str(t))}" for h, t in zip(hover, true_labels)], dtype=object
        )
    cols = 2 if true_labels is not None else 1
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=["coloured by cluster", "coloured by true label"][:cols],
        horizontal_spacing=0.12,
    )
    for trace in _category_traces(x, y, cluster_str, hover, "legend", "cluster "):
        fig.add_trace(trace, row=1, col=1)
    layout = dict(
        title=title,
        height=650,
        legend=dict(title="cluster", x=0.44 if cols == 2 else 1.02, y=1, itemsizing="constant"),
    )
    if true_labels is not None:
        for trace in _category_traces(x, y, np.asarray(true_labels).astype(str), hover, "legend2", ""):
            fig.add_trace(trace, row=1, col=2)
        layout["legend2"] = dict(title="true label", x=1.02, y=1, itemsizing="constant")
    fig.update_layout(**layout)
    return fig


def cluster_sizes_figure(clusters: np.ndarray, title: str = "Cluster sizes") -> go.Figure:
    """Bar chart of points per cluster, largest first; noise shown as its own bar."""
    ids, counts = np.unique(clusters, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    names = [("noise" if c < 0 else f"cluster {c}") for c in ids[order]]
    fig = go.Figure(go.Bar(x=names, y=counts[order], hovertemplate="%{x}: %{y} points<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="cluster", yaxis_title="points", height=450)
    return fig


def write_html(fig: go.Figure, path) -> None:
    """Write ``fig`` as one HTML file that opens offline (plotly.js embedded)."""
    fig.write_html(path, include_plotlyjs=True, full_html=True)
