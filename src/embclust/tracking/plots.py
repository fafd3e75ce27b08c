"""Interactive Plotly figures of a clustering, written as self-contained HTML."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from embclust.explain.tables import seeded_sample
from embclust.errors import ConfigError

# WebGL scatter keeps maps of 100k+ points responsive in the browser.
_MARKER = dict(size=4, opacity=0.7)


def _category_traces(x, y, groups, hover, legend: str, prefix: str, names: dict[str, str] | None = None):
    """One Scattergl trace per group, so each group can be toggled in the legend."""
    order = sorted(np.unique(groups), key=lambda g: (len(g), g))
    for g in order:
        mask = groups == g
        yield go.Scattergl(
            x=x[mask],
            y=y[mask],
            mode="markers",
            marker=_MARKER,
            name=(names or {}).get(g, f"{prefix}{html.escape(str(g))}"),
            text=hover[mask],
            hovertemplate="%{text}<extra></extra>",
            legend=legend,
        )


def check_max_points(max_points) -> None:
    """Raise :class:`ConfigError` unless ``analysis.maps.max_points`` is null or an int >= 1."""
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1):
        raise ConfigError(f"analysis.maps.max_points={max_points!r} must be null or an integer >= 1")


def drawn_rows(coords: np.ndarray, max_points: int | None, seed: int) -> tuple[np.ndarray, str]:
    """Rows a map draws: those with coordinates, or a seeded sample of ``max_points`` of them.

    Returns the rows and a note for the title ("" when every placed point is drawn). A browser
    cannot open a map of a million points, and every point's coordinates are in labels.parquet.
    """
    check_max_points(max_points)
    placed = np.flatnonzero(np.isfinite(coords).all(axis=1))
    if max_points is None or placed.size <= max_points:
        return placed, ""
    rows = placed[seeded_sample(placed.size, max_points, seed)]
    return rows, f" [{max_points} of {placed.size} points drawn, seeded; all in labels.parquet]"


def hover_text(ids, clusters=None, true_labels=None, texts=None, width: int = 120) -> np.ndarray:
    """Hover lines per point. User data is HTML-escaped so ids or texts cannot inject markup."""
    parts = [[f"id: {html.escape(str(i))}" for i in ids]]
    if clusters is not None:
        parts.append([f"cluster: {c}" for c in clusters])
    if true_labels is not None:
        parts.append([f"label: {html.escape(str(t))}" for t in true_labels])
    if texts is not None:
        parts.append([html.escape(str(t)[:width] + ("..." if len(str(t)) > width else "")) for t in texts])
    return np.array(["<br>".join(p) for p in zip(*parts)], dtype=object)


def cluster_map_figure(
    coords: np.ndarray,
    clusters: np.ndarray,
    ids: np.ndarray,
    true_labels=None,
    title: str = "",
    texts: np.ndarray | None = None,
    cluster_names: dict[int, str] | None = None,
    max_points: int | None = None,
    seed: int = 0,
) -> go.Figure:
    """Scatter of the 2-D map coloured by cluster, beside one coloured by true label when known.

    ``true_labels``: an array, or a function of the drawn rows giving theirs (no string per row
    of a large dataset).

    ``cluster_names`` (e.g. top keywords) are shown in the legend; points without coordinates
    (outside a t-SNE sample) are left out, and at most ``max_points`` are drawn (seeded sample).
    """
    rows, note = drawn_rows(coords, max_points, seed)
    title += note
    coords, clusters, ids = coords[rows], clusters[rows], np.asarray(ids)[rows]
    if callable(true_labels):
        true_labels = np.asarray(true_labels(rows))
    elif true_labels is not None:
        true_labels = np.asarray(true_labels)[rows]
    texts = None if texts is None else np.asarray(texts)[rows]
    x, y = coords[:, 0], coords[:, 1]
    cluster_str = np.where(clusters < 0, "noise", clusters.astype(str))
    hover = hover_text(ids, cluster_str, true_labels, texts)
    cols = 2 if true_labels is not None else 1
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=["coloured by cluster", "coloured by true label"][:cols],
        horizontal_spacing=0.12,
    )
    names = {str(c): f"cluster {c}: {html.escape(n)}" for c, n in (cluster_names or {}).items()}
    for trace in _category_traces(x, y, cluster_str, hover, "legend", "cluster ", names):
        fig.add_trace(trace, row=1, col=1)
    layout = dict(
        title=title,
        height=650,
        legend=dict(title="cluster", x=0.44 if cols == 2 else 1.02, y=1, itemsizing="constant"),
    )
    if true_labels is not None:
        for trace in _category_traces(x, y, true_labels.astype(str), hover, "legend2", ""):
            fig.add_trace(trace, row=1, col=2)
        layout["legend2"] = dict(title="true label", x=1.02, y=1, itemsizing="constant")
    fig.update_layout(**layout)
    return fig


def category_map_figure(
    coords: np.ndarray,
    values: np.ndarray,
    ids: np.ndarray,
    texts: np.ndarray | None,
    title: str,
    legend_title: str,
    max_points: int | None = None,
    seed: int = 0,
) -> go.Figure:
    """The 2-D map coloured by one metadata column (at most ``max_points`` drawn, seeded sample)."""
    rows, note = drawn_rows(coords, max_points, seed)
    title += note
    hover = hover_text(np.asarray(ids)[rows], None, None, None if texts is None else np.asarray(texts)[rows])
    hover = np.array([f"{h}<br>{html.escape(legend_title)}: {html.escape(v)}" for h, v in zip(hover, values[rows])], dtype=object)
    fig = go.Figure(list(_category_traces(coords[rows, 0], coords[rows, 1], values[rows], hover, "legend", "")))
    fig.update_layout(title=title, height=650, legend=dict(title=legend_title, itemsizing="constant"))
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
