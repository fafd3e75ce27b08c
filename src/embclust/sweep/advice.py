"""Advice for choosing a sweep cell: the knee of each metric against k, and the PCA trade-off.

The knee is found with Kneedle (``kneed.KneeLocator``, the method yellowbrick's elbow plot
uses). Where it applies, per metric:

- ``inertia`` always falls as k grows; its knee is the k after which adding clusters stops
  paying (convex, decreasing).
- ``davies_bouldin`` (lower is better) gets a knee only when it keeps improving up to the
  largest k tried (convex, decreasing); ``silhouette`` and ``calinski_harabasz`` likewise when
  they keep rising (concave, increasing). A curve that peaks inside the range has an optimum,
  which the leaderboard already reports, not an elbow: no knee is given for it.

Groups (e.g. PCA sizes) are treated separately; a group with fewer than 3 finished k values
gets ``None``.
"""

from __future__ import annotations

import math
from typing import Hashable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CURVE_METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin", "inertia")
K_PARAMS = ("clusterer.n_clusters", "clusterer.min_cluster_size")
PCA_PARAM = "preprocess.pca_components"

# (Kneedle curve, direction, whether the curve must improve all the way to the largest k)
_KNEE_SHAPES = {
    "inertia": ("convex", "decreasing", False),
    "davies_bouldin": ("convex", "decreasing", True),
    "silhouette": ("concave", "increasing", True),
    "calinski_harabasz": ("concave", "increasing", True),
}


def kneedle_locator():
    """``kneed.KneeLocator``, imported without the matplotlib it loads only for its plots.

    kneed imports ``matplotlib.pyplot`` at module level, inside ``try/except ImportError``, for
    its ``plot_knee`` methods, which embclust never calls: that import is 0.3 s of a sweep's
    summary. While kneed is first imported (and matplotlib is not loaded already) matplotlib
    reads as absent; afterwards it imports as usual.
    """
    import sys

    if "kneed" not in sys.modules and "matplotlib" not in sys.modules:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # import fails, kneed skips plots
        try:
            import kneed  # noqa: F401
        finally:
            if sys.modules.get("matplotlib", 0) is None:
                del sys.modules["matplotlib"]
    from kneed import KneeLocator

    return KneeLocator


def knee_of_curve(ks, values, metric: str = "inertia") -> int | None:
    """The knee k of one metric-against-k curve, or None when it has none (see module doc)."""
    if metric not in _KNEE_SHAPES:
        raise ValueError(f"no knee rule for metric {metric!r} (known: {', '.join(_KNEE_SHAPES)})")
    curve = pd.DataFrame({"k": pd.to_numeric(pd.Series(ks), errors="coerce"), "y": pd.to_numeric(pd.Series(values), errors="coerce")})
    curve = curve.replace([np.inf, -np.inf], np.nan).dropna()
    # Several cells at one k (another swept key): their mean stands for that k.
    curve = curve.groupby("k", as_index=False)["y"].mean().sort_values("k")
    if len(curve) < 3 or curve["y"].nunique() < 2:
        return None
    shape, direction, must_improve_to_end = _KNEE_SHAPES[metric]
    y = curve["y"].to_numpy()
    best_at_end = y[-1] == (y.min() if direction == "decreasing" else y.max())
    if must_improve_to_end and not best_at_end:
        return None
    knee = kneedle_locator()(curve["k"].to_numpy(), y, curve=shape, direction=direction).knee
    if knee is None or (isinstance(knee, float) and math.isnan(knee)):
        return None
    return int(round(float(knee)))


def knee_points(
    table: pd.DataFrame, k_param: str, group_param: str | None, metric: str = "inertia"
) -> dict[Hashable, int | None]:
    """Knee k of ``metric`` per value of ``group_param`` (one entry, key None, without a group).

    ``table`` is a sweep leaderboard: one row per cell with ``status``, the swept keys and the
    metrics. Failed cells and missing values are ignored.
    """
    if metric not in table or k_param not in table:
        return {}
    done = table[table["status"] == "FINISHED"] if "status" in table else table
    if group_param is None:
        return {None: knee_of_curve(done[k_param], done[metric], metric)}
    return {
        g: knee_of_curve(part[k_param], part[metric], metric)
        for g, part in ((g, done[done[group_param] == g]) for g in _sorted_values(table[group_param]))
    }


def knees_by_metric(table: pd.DataFrame, k_param: str, group_param: str | None) -> dict[str, dict]:
    """``knee_points`` for every curve metric present in ``table``."""
    return {
        m: knee_points(table, k_param, group_param, m)
        for m in CURVE_METRICS
        if m in table and table[m].notna().any()
    }


def knee_metric_names(knees: dict[Hashable, int | None], group_param: str | None) -> dict[str, float]:
    """MLflow metrics for the parent run: ``knee_k``, or ``knee_k/<group key>_<value>`` per group."""
    if group_param is None:
        k = knees.get(None)
        return {} if k is None else {"knee_k": float(k)}
    short = group_param.rsplit(".", 1)[-1]
    return {f"knee_k/{short}_{g}": float(k) for g, k in knees.items() if k is not None}


def knee_advice(knees: dict[Hashable, int | None], k_param: str, group_param: str | None, metric: str = "inertia") -> str:
    """One line stating the knees, worded as advice to show beside ``best_cell``."""
    found = {g: k for g, k in knees.items() if k is not None}
    if not found:
        return f"no knee of {metric} against {k_param} (too few finished k values, or no elbow)"
    if group_param is None:
        where = f"{k_param}={found[None]}"
    else:
        where = ", ".join(f"{k_param}={k} at {group_param}={g}" for g, k in found.items())
    return f"knee of {metric} (Kneedle): {where}; advice to weigh against the best cell, not a decision"


def metric_curves(
    table: pd.DataFrame, k_param: str, group: str | None, knees: dict[str, dict] | None = None
) -> go.Figure:
    """Each metric against k, one line per value of ``group`` (e.g. PCA size), knees marked.

    ``knees`` maps a metric to ``knee_points`` output; None computes them for every metric.
    """
    metrics = [m for m in CURVE_METRICS if m in table and table[m].notna().any()]
    if knees is None:
        knees = knees_by_metric(table, k_param, group)
    fig = make_subplots(rows=1, cols=max(len(metrics), 1), subplot_titles=metrics, horizontal_spacing=0.06)
    done = table[table["status"] == "FINISHED"].copy()
    done["_k"] = pd.to_numeric(done[k_param], errors="coerce")
    groups = _sorted_values(done[group]) if group else [None]
    colors = _palette(len(groups))
    for g, color in zip(groups, colors):
        part = done if g is None else done[done[group] == g]
        part = part.sort_values("_k")
        label = f"{group}={g}" if group else "cells"
        for col, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Scatter(
                    x=part["_k"], y=part[metric], mode="lines+markers", name=label, legendgroup=str(g),
                    showlegend=col == 1, line={"color": color},
                ),
                row=1,
                col=col,
            )
            k = knees.get(metric, {}).get(g)
            at = part[part["_k"] == k][metric] if k is not None else pd.Series(dtype=float)
            if k is not None and at.notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=[k], y=[float(at.mean())], mode="markers", legendgroup=str(g), showlegend=False,
                        name=f"knee {label}",
                        marker={"symbol": "star", "size": 16, "color": color, "line": {"width": 1, "color": "black"}},
                        hovertemplate=f"knee of {metric}: {k_param}={k}<br>{label}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
            fig.update_xaxes(title_text=k_param, row=1, col=col)
    fig.update_layout(title=f"Metrics against {k_param} (stars: knee, Kneedle; advice, not a decision)", height=450)
    return fig


def tradeoff_figure(
    table: pd.DataFrame,
    variance_by_pca: dict[int, float],
    metric: str = "silhouette_ref",
    k_param: str | None = None,
) -> go.Figure:
    """Mean ``metric`` against cumulative explained variance, one point per PCA size and k.

    Cells without PCA keep all the variance (1.0). ``variance_by_pca`` maps a PCA size to its
    cumulative explained variance ratio.
    """
    k_param = k_param or next((p for p in K_PARAMS if p in table), None)
    done = table[table["status"] == "FINISHED"] if "status" in table else table
    if metric not in done:
        raise ValueError(f"sweep table has no {metric!r} column; columns: {', '.join(map(str, done.columns))}")
    pca = done[PCA_PARAM] if PCA_PARAM in done else pd.Series("None", index=done.index)
    points = pd.DataFrame(
        {
            "pca": pca.map(_pca_size),
            "k": done[k_param].astype(str) if k_param else "",
            "y": pd.to_numeric(done[metric], errors="coerce"),
        }
    ).dropna(subset=["y"])
    points = points.groupby(["pca", "k"], as_index=False, dropna=False)["y"].mean()
    points["variance"] = [1.0 if p is None or pd.isna(p) else variance_by_pca.get(int(p), np.nan) for p in points["pca"]]
    points = points.dropna(subset=["variance"])
    fig = go.Figure()
    ks = sorted(points["k"].unique(), key=_as_number)
    for k, color in zip(ks, _palette(len(ks))):
        part = points[points["k"] == k].sort_values("variance")
        pca_text = ["all (no PCA)" if p is None or pd.isna(p) else str(int(p)) for p in part["pca"]]
        fig.add_trace(
            go.Scatter(
                x=part["variance"], y=part["y"], mode="lines+markers", name=f"{k_param}={k}" if k_param else metric,
                line={"color": color}, customdata=np.column_stack([pca_text, [k] * len(part)]),
                hovertemplate=(
                    "PCA components: %{customdata[0]}<br>" + (f"{k_param}=%{{customdata[1]}}<br>" if k_param else "")
                    + "cumulative explained variance: %{x:.3f}<br>" + f"mean {metric}: %{{y:.4f}}<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        title=f"Cluster fit against information kept: mean {metric} vs cumulative explained variance",
        xaxis_title="cumulative explained variance (PCA)",
        yaxis_title=f"mean {metric}",
        height=450,
    )
    return fig


def _pca_size(value) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("None", "null", ""):
        return None
    return int(float(value))


def _as_number(value):
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def _sorted_values(series: pd.Series) -> list:
    return sorted(series.dropna().unique().tolist(), key=_as_number)


def _palette(n: int) -> list[str]:
    import plotly.colors

    base = plotly.colors.qualitative.Plotly
    return [base[i % len(base)] for i in range(n)]
